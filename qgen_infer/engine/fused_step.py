"""The solver with every step one Triton launch (``qgen_infer.kernels.fused_step``), for MLP
models on the ``triton`` backend.

:class:`FusedStepSolver` has the ``run(y, z0, steps)`` of :class:`qgen_infer.solve.GraphedSolver`
and returns what ``proximal_gradient_descent`` returns for the model's networks: it is handed to
``reconstruct_latent`` as ``graphed``. Each step runs the packed generator forward and back, the
sensing net forward and back, the residual and the proximal update (``P_s``, sphere projection)
in one kernel; on a CUDA device the launch is also replayed from a CUDA graph (one per batch
shape), which removes Triton's Python launch cost. Whether it beats the unfused graphed step is
the GPU's call (``bench/gpu_suite.sh`` times both); it is off by default until measured.

Supported: the MLP family (three packed ``Linear`` layers, then a reshape; a sensing net of three
``Linear`` layers, each optionally followed by ReLU, LeakyReLU or Tanh). Anything else raises
:class:`QgenError` saying so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qgen_infer.engine.packed_modules import PackedLinear
from qgen_infer.errors import QgenError
from qgen_infer.solve.proximal import PGDResult, measurement_loss

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh"}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def step_operands(model: Any, *, step_size: float, sparsity: int | None, project: bool,
                  precision: str = "fp32") -> Any:
    """The kernel's :class:`~qgen_infer.kernels.fused_step.MlpStep` for ``model`` (dense weights
    in the dot dtype of ``precision``); QgenError when the model is not one it runs."""
    from qgen_infer.kernels.fused_step import DenseLayerOp, MlpStep, PackedLayerOp
    from qgen_infer.kernels.layout import PackedKWords

    if precision not in PRECISIONS:
        raise QgenError(f"the fused step runs fp32 or fp16 products, not {precision}")
    packed = [m for m in model.generator.children() if isinstance(m, PackedLinear)]
    others = [m for m in model.generator.children()
              if not isinstance(m, PackedLinear) and type(m).__name__ != "Reshape"]
    if len(packed) != 3 or others:
        raise QgenError("the fused step runs MLP generators (three packed linear layers); this "
                        f"model is the {model.config.get('family', '?')} family")
    if not all(isinstance(m.prepared, PackedKWords) for m in packed):
        raise QgenError(f"the fused step needs the triton backend, not {model.backend.name}")
    gen = tuple(PackedLayerOp(m.prepared, m.epilogue.alpha, m.epilogue.beta,
                              m.epilogue.activation, float(m.epilogue.negative_slope))
                for m in packed)
    dense: list[list] = []
    for m in model.sensing.children():
        if isinstance(m, nn.Linear):
            dense.append([m, "none", 0.0])
        elif type(m) in _ACTIVATION_MODULES and dense and dense[-1][1] == "none":
            dense[-1][1] = _ACTIVATION_MODULES[type(m)]
            dense[-1][2] = float(getattr(m, "negative_slope", 0.0))
        elif not isinstance(m, nn.Flatten):
            raise QgenError(f"the fused step cannot run the sensing layer {type(m).__name__}")
    if len(dense) != 3:
        raise QgenError(f"the fused step runs a sensing net of three linear layers, not "
                        f"{len(dense)}")
    dtype = PRECISIONS[precision]
    sense = tuple(DenseLayerOp(lin.weight.detach().to(dtype).contiguous(),
                               None if lin.bias is None else lin.bias.detach().float(), act, slope)
                  for lin, act, slope in dense)
    return MlpStep(gen, sense, float(step_size), sparsity, bool(project))  # type: ignore[arg-type]


class _Buffers:
    """Static ``y``, ``z`` (two, ping-pong), ``loss`` and scratch for one batch shape, and the
    CUDA graph of one step on them (captured on the second use, after a launch compiled it)."""

    def __init__(self, y: torch.Tensor, z: torch.Tensor, width: int) -> None:
        self.y = torch.empty_like(y)
        self.z = torch.empty_like(z)
        self.z_next = torch.empty_like(z)
        self.loss = torch.empty(z.shape[0], device=z.device, dtype=torch.float32)
        self.scratch = torch.empty((z.shape[0], width), device=z.device, dtype=torch.float32)
        self.graph: Any = None


class FusedStepSolver:
    """Latent proximal GD for an MLP model with each step one fused Triton kernel.

    ``precision``: ``fp32`` (products in fp32; TF32 where torch allows it) or ``fp16`` (tensor-core
    products on fp16-rounded operands; activations, latent, loss and update stay fp32).
    ``cuda_graph``: replay the step's launch from a CUDA graph (CUDA devices only).
    ``rows_per_program``: batch rows each program solves (a power of two; 16 and more use the
    tensor cores, fewer launch more programs on FMA: which pays is for the GPU to say).
    """

    def __init__(self, model: Any, *, step_size: float, sparsity: int | None, project: bool,
                 precision: str = "fp32", cuda_graph: bool = False,
                 rows_per_program: int = 16) -> None:
        from qgen_infer.kernels.fused_step import scratch_width

        self.model = model
        self.op = step_operands(model, step_size=step_size, sparsity=sparsity, project=project,
                                precision=precision)
        self.dot_dtype = PRECISIONS[precision]
        if cuda_graph and model.device.type != "cuda":
            raise QgenError(f"CUDA graphs need the model on a CUDA device, not {model.device}")
        self.cuda_graph = cuda_graph
        if rows_per_program < 1 or rows_per_program & (rows_per_program - 1):
            raise QgenError(f"rows per program must be a power of two, got {rows_per_program}")
        self.rows_per_program = rows_per_program
        self.width = scratch_width(self.op)
        self._buffers: dict[tuple, _Buffers] = {}

    def _launch(self, buf: _Buffers) -> None:
        from qgen_infer.kernels.fused_step import mlp_step

        mlp_step(buf.z, buf.y, self.op, scratch=buf.scratch, out=buf.z_next, loss=buf.loss,
                 dot_dtype=self.dot_dtype, block_m=self.rows_per_program)
        buf.z.copy_(buf.z_next)

    def _step(self, buf: _Buffers) -> None:
        if not self.cuda_graph:
            self._launch(buf)
        elif buf.graph is not None:
            buf.graph.replay()
        else:
            self._launch(buf)  # compiles the kernel outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the launch and the copy, runs neither
                self._launch(buf)
            buf.graph = graph

    def run(self, y: torch.Tensor, z0: torch.Tensor, steps: int) -> PGDResult:
        """``steps`` fused steps from ``z0`` for measurements ``y``; x and the loss of the last
        latent through the model's own networks (as ``proximal_gradient_descent``)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        y = y.detach().to(self.model.device, torch.float32).reshape(y.shape[0], -1)
        z = z0.detach().to(self.model.device, torch.float32)
        if steps > 0:
            key = (tuple(y.shape), tuple(z.shape))
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = _Buffers(y, z, self.width)
            buf.y.copy_(y)
            buf.z.copy_(z)
            for _ in range(steps):
                self._step(buf)
            z = buf.z.clone()
        with torch.no_grad():
            x = self.model.generator(z)
            loss = measurement_loss(y, self.model.sensing(x))
        return PGDResult(z=z, x=x, loss=loss)
