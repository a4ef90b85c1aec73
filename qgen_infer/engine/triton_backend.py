"""The ``triton`` backend: the packed products of ``backend.py`` on bit-packed weights, run by the
Triton kernels in ``qgen_infer.kernels`` (GPU, or the CPU under ``TRITON_INTERPRET=1``).

``prepare`` repacks the canonical codes once into the ``kpack`` layout (codes packed along K into
int32 words, 3 bits as a 2-bit plus a 1-bit plane; see ``qgen_infer.kernels.layout``) and moves it
to the backend's device. ``gemm``, ``gemm_t`` and ``gemm_t_through_epilogue`` call the
``torch.ops.qgen_infer.packed_gemm`` / ``packed_gemm_t`` / ``packed_gemm_t_act`` custom ops, so
the solver loop can be compiled or captured in a CUDA graph.

``prepare_conv`` / ``conv`` run Conv2d and ConvTranspose2d layers as implicit GEMM
(``triton_conv``) when ``implicit_conv`` is on (``QGEN_TRITON_IMPLICIT_CONV=1``); otherwise the
layers go through ``gemm`` with unfold / col2im around it, as on every backend.

Outputs are in the activation dtype (float32, float16 or bfloat16) with fp32 accumulation.
``TRITON_INTERPRET=1`` must be set before this module (or any kernel module) is first imported:
Triton decides at decoration time whether a kernel is compiled or interpreted.
"""

from __future__ import annotations

import os

import torch

from qgen_infer.engine.backend import Epilogue, MatrixWeight


def is_available() -> bool:
    """True when triton imports and kernels can run: a CUDA device, or ``TRITON_INTERPRET=1``."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or torch.cuda.is_available()


def _default_device() -> torch.device:
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


class TritonBackend:
    """Backend protocol of ``backend.py``; ``prepared`` objects are ``PackedKWords``."""

    name = "triton"

    def __init__(self, device: torch.device | str | None = None,
                 implicit_conv: bool | None = None) -> None:
        if not is_available():
            raise RuntimeError("the triton backend needs triton and a CUDA device (or "
                               "TRITON_INTERPRET=1 to run the kernels on the CPU)")
        import qgen_infer.kernels.ops  # noqa: F401  (registers torch.ops.qgen_infer.*)

        self.device = torch.device(device) if device is not None else _default_device()
        from qgen_infer.engine.triton_conv import ENV

        self.implicit_conv = (os.environ.get(ENV, "0") == "1" if implicit_conv is None
                              else implicit_conv)

    def __repr__(self) -> str:
        return f"TritonBackend(device={str(self.device)!r})"

    def prepare(self, weight: MatrixWeight):
        from qgen_infer.kernels.layout import PackedKWords

        return PackedKWords.from_codes(weight.codes, weight.scale, weight.zero, weight.bits,
                                       self.device)

    def gemm(self, x: torch.Tensor, prepared, epilogue: Epilogue | None = None) -> torch.Tensor:
        ep = epilogue or Epilogue()
        return torch.ops.qgen_infer.packed_gemm(x, prepared.words, prepared.scale, prepared.zero,
                                                ep.alpha, ep.beta, prepared.bits, prepared.k,
                                                ep.activation, float(ep.negative_slope))

    def gemm_t(self, g: torch.Tensor, prepared) -> torch.Tensor:
        return torch.ops.qgen_infer.packed_gemm_t(g, prepared.words, prepared.scale,
                                                  prepared.zero, prepared.bits, prepared.k)

    def gemm_t_through_epilogue(self, grad_y: torch.Tensor, y: torch.Tensor, prepared,
                                epilogue: Epilogue) -> torch.Tensor:
        """``(grad_y ⊙ act'(y) ⊙ alpha) @ W`` in one kernel (the derivative is applied to each
        gradient tile as it is loaded): the input gradient of ``gemm`` given its output ``y``."""
        return torch.ops.qgen_infer.packed_gemm_t_act(
            grad_y, y, prepared.words, prepared.scale, prepared.zero, epilogue.alpha,
            prepared.bits, prepared.k, epilogue.activation, float(epilogue.negative_slope))


    def prepare_conv(self, module):
        """A conv layer's :class:`~qgen_infer.engine.triton_conv.ConvPlan`, or None when the
        implicit-GEMM convolutions are off."""
        if not self.implicit_conv:
            return None
        from qgen_infer.engine.triton_conv import plan_conv

        return plan_conv(module, self.device)

    def conv(self, x: torch.Tensor, plan, epilogue: Epilogue) -> torch.Tensor:
        """``act(alpha * conv(x) + beta)`` of the layer ``plan`` describes, with autograd."""
        from qgen_infer.engine.triton_conv import packed_conv

        return packed_conv(x, plan, epilogue)


def create_backend(device: torch.device | str | None = None) -> TritonBackend:
    """A ``TritonBackend`` on ``device`` (default: the current CUDA device, or the CPU when the
    kernels are interpreted)."""
    return TritonBackend(device)
