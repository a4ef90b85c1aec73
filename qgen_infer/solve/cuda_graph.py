"""The solver's step as a CUDA graph: one capture per batch shape, then ``steps`` replays.

At MNIST sizes a proximal-GD step is ~20 small kernels (three packed GEMMs forward, three
transposed ones backward, the sensing net both ways, P_s, the projection), each a few
microseconds of GPU work, so the eager loop is bound by kernel launches and Python. Captured,
a step is one ``cudaGraphLaunch``. The captured step is :func:`proximal_step` after the same
forward and ``autograd.grad`` as the eager loop, on static input/output buffers: replaying it
computes what the eager loop computes (tests hold the two to each other on a GPU).

Capture needs: a CUDA device; ``G`` and ``A`` whose kernels are graph-safe (the packed Triton
ops and plain torch layers are; kernels are compiled, and tuned when asked, during the warm-up,
before capture); no host synchronisation inside a step (the solver has none).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qgen_infer.solve.proximal import PGDResult, measurement_loss, proximal_step

Operator = Callable[[torch.Tensor], torch.Tensor]
WARMUP_STEPS = 3  # on a side stream before capture: Triton compiles/tunes, cuBLAS makes handles


class _CapturedStep:
    """Static buffers ``y`` ``[B, m]`` and ``z`` ``[B, d]`` and the graph of one step on them."""

    def __init__(self, solver: CudaGraphSolver, y: torch.Tensor, z: torch.Tensor) -> None:
        self.solver = solver
        self.y = torch.zeros_like(y)
        self.z = torch.zeros_like(z)
        side = torch.cuda.Stream(device=z.device)
        side.wait_stream(torch.cuda.current_stream(z.device))
        with torch.cuda.stream(side):
            self.y.copy_(y)
            self.z.copy_(z)
            for _ in range(WARMUP_STEPS):
                self.step()
        torch.cuda.current_stream(z.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def step(self) -> None:
        s = self.solver
        with torch.enable_grad():
            z = self.z.detach().requires_grad_(True)
            loss = measurement_loss(self.y, s.sensing(s.generator(z)))
            (grad,) = torch.autograd.grad(loss.sum(), z)
        self.z.copy_(proximal_step(z.detach(), grad, s.step_size, s.sparsity, s.project))


class CudaGraphSolver:
    """Latent proximal GD with every step replayed from a CUDA graph.

    ``run(y, z0, steps)`` returns the same :class:`PGDResult` as
    ``proximal_gradient_descent(y, G, A, z0, steps=..., step_size=..., sparsity=...,
    project=...)``. One graph is captured per ``(batch, latent, measurements, dtype)`` and kept
    (a reconstruction has at most two batch shapes: full batches and the last one).
    """

    def __init__(self, generator: Operator, sensing: Operator, *, step_size: float,
                 sparsity: int | None, project: bool) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; this torch has none")
        self.generator, self.sensing = generator, sensing
        self.step_size, self.sparsity, self.project = float(step_size), sparsity, project
        self._steps: dict[tuple, _CapturedStep] = {}

    def run(self, y: torch.Tensor, z0: torch.Tensor, steps: int) -> PGDResult:
        if y.device.type != "cuda" or z0.device != y.device:
            raise ValueError(f"y and z0 must be on the same CUDA device, got {y.device} and "
                             f"{z0.device}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        z = z0.detach()
        if steps > 0:
            key = (tuple(y.shape), tuple(z0.shape), y.dtype, z0.dtype, y.device)
            captured = self._steps.get(key)
            if captured is None:
                captured = self._steps[key] = _CapturedStep(self, y, z)
            captured.y.copy_(y)
            captured.z.copy_(z)
            for _ in range(steps):
                captured.graph.replay()
            z = captured.z.clone()
        with torch.no_grad():
            x = self.generator(z)
            loss = measurement_loss(y, self.sensing(x))
        return PGDResult(z=z, x=x, loss=loss)
