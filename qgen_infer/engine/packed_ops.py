"""Autograd through packed weights: forward is ``backend.gemm``, backward ``backend.gemm_t``.

For ``y = act(alpha * (x Wᵀ) + beta)`` (``x`` ``[M, K]``, ``W`` ``[N, K]``) the input gradient is::

    ∂L/∂x = (∂L/∂y ⊙ act'(y) ⊙ alpha) W          -- one gemm_t on the packed weight

where ``act'`` is written in terms of the output ``y`` (:func:`activation_grad_from_output`), so
forward saves ``y`` only, never the pre-activation. A backend that has
``gemm_t_through_epilogue(grad_y, y, prepared, epilogue)`` (the cpu one) computes that product in
one kernel; the others get ``gemm_t`` of the gradient formed here. No gradient flows to the
weights: they are frozen codes (the solver differentiates w.r.t. the latent ``z`` only).

ConvTranspose2d cannot fuse its epilogue into the gemm (col2im sums overlapping columns before the
per-channel affine), so it runs :class:`PackedGemm` with an empty epilogue, ``F.fold``, then
:class:`ApplyEpilogue`, whose backward is the same ``⊙ act'(y) ⊙ alpha``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from qgen_infer.engine.backend import Backend, Epilogue, activation_grad_from_output


def _epilogue_backward(grad: torch.Tensor, y: torch.Tensor, epilogue: Epilogue | None,
                       channel_dim: int) -> torch.Tensor:
    """``grad ⊙ act'(y) ⊙ alpha`` (alpha broadcast along ``channel_dim``)."""
    if epilogue is None:
        return grad
    if epilogue.activation != "none":
        grad = grad * activation_grad_from_output(y, epilogue.activation,
                                                  epilogue.negative_slope)
    if epilogue.alpha is not None:
        shape = [1] * grad.ndim
        shape[channel_dim] = -1
        grad = grad * epilogue.alpha.reshape(shape)
    return grad


class PackedGemm(torch.autograd.Function):
    """``y = act(alpha * (x Wᵀ) + beta)`` on a backend-prepared packed weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, backend: Backend, prepared: Any,
                epilogue: Epilogue | None) -> torch.Tensor:  # type: ignore[override]
        y = backend.gemm(x, prepared, epilogue)
        ctx.backend, ctx.prepared, ctx.epilogue = backend, prepared, epilogue
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (y,) = ctx.saved_tensors
        fused = getattr(ctx.backend, "gemm_t_through_epilogue", None)
        if fused is not None and ctx.epilogue is not None:
            return fused(grad_y.contiguous(), y, ctx.prepared, ctx.epilogue), None, None, None
        g = _epilogue_backward(grad_y.contiguous(), y, ctx.epilogue, channel_dim=-1)
        return ctx.backend.gemm_t(g, ctx.prepared), None, None, None


class ApplyEpilogue(torch.autograd.Function):
    """``act(alpha * acc + beta)`` per channel of ``acc`` along ``channel_dim`` (NCHW: 1)."""

    @staticmethod
    def forward(ctx: Any, acc: torch.Tensor, epilogue: Epilogue,
                channel_dim: int) -> torch.Tensor:  # type: ignore[override]
        y = epilogue.apply(acc, channel_dim)
        ctx.epilogue, ctx.channel_dim = epilogue, channel_dim
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return _epilogue_backward(grad_y, y, ctx.epilogue, ctx.channel_dim), None, None


def packed_gemm(x: torch.Tensor, backend: Backend, prepared: Any,
                epilogue: Epilogue | None = None) -> torch.Tensor:
    return PackedGemm.apply(x, backend, prepared, epilogue)


def apply_epilogue(acc: torch.Tensor, epilogue: Epilogue, channel_dim: int = 1) -> torch.Tensor:
    return ApplyEpilogue.apply(acc, epilogue, channel_dim)
