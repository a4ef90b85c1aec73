"""Autograd through packed weights: forward is ``backend.gemm``, backward ``backend.gemm_t``.

For ``y = act(alpha * (x Wᵀ) + beta)`` (``x`` ``[M, K]``, ``W`` ``[N, K]``) the input gradient is::

    ∂L/∂x = (∂L/∂y ⊙ act'(y) ⊙ alpha) W          -- one gemm_t on the packed weight

where ``act'`` is written in terms of the output ``y`` (:func:`activation_grad_from_output`), so
forward saves ``y`` only, never the pre-activation. A backend that has
``gemm_t_through_epilogue(grad_y, y, prepared, epilogue)`` (the cpu one) computes that product in
one kernel; the others get ``gemm_t`` of the gradient formed here. No gradient flows to the
weights: they are frozen codes (the solver differentiates w.r.t. the latent ``z`` only).

ConvTranspose2d (and a Conv2d run per pixel) cannot fuse its epilogue into the gemm (col2im sums
overlapping columns before the per-channel affine), so it runs :class:`PackedGemm` with an empty
epilogue, :func:`col2im_channels_last`, then :class:`ApplyEpilogue`, whose backward is the same
``⊙ act'(y) ⊙ alpha``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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


def _tap_slices(h: int, w: int, ky: int, kx: int, stride: tuple[int, ...],
                dilation: tuple[int, ...]) -> tuple[slice, slice]:
    """Where tap ``(ky, kx)`` of every input pixel lands in the padded output grid."""
    y0, x0 = ky * dilation[0], kx * dilation[1]
    return (slice(y0, y0 + (h - 1) * stride[0] + 1, stride[0]),
            slice(x0, x0 + (w - 1) * stride[1] + 1, stride[1]))


class Col2imChannelsLast(torch.autograd.Function):
    """col2im on channels-last columns: ``cols`` ``[B, H, W, kh, kw, C]`` (a pixel's products
    with every tap, tap-major) summed into ``[B, H_out, W_out, C]``, tap ``(ky, kx)`` of input
    pixel ``(iy, ix)`` landing on ``(iy*s - p + ky*d, ix*s - p + kx*d)`` -- ``F.fold``'s sum
    without its ``[B, C*kh*kw, L]`` layout, which costs a transpose of the whole column tensor
    each way. One strided add (forward) or copy (backward) per tap, each over C contiguous
    values per pixel."""

    @staticmethod
    def forward(ctx: Any, cols: torch.Tensor, output_size: tuple[int, int],
                padding: tuple[int, ...], stride: tuple[int, ...],
                dilation: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        b, h, w, kh, kw, c = cols.shape
        ho, wo = output_size
        span = [(n - 1) * s + (k - 1) * d + 1
                for n, s, k, d in zip((h, w), stride, (kh, kw), dilation, strict=True)]
        hp, wp = max(span[0], ho + 2 * padding[0]), max(span[1], wo + 2 * padding[1])
        out = cols.new_zeros((b, hp, wp, c))
        for ky in range(kh):
            for kx in range(kw):
                sy, sx = _tap_slices(h, w, ky, kx, stride, dilation)
                out[:, sy, sx, :].add_(cols[:, :, :, ky, kx, :])  # a view: no write-back copy
        ctx.geometry = (cols.shape, (hp, wp), output_size, padding, stride, dilation)
        return out[:, padding[0]:padding[0] + ho, padding[1]:padding[1] + wo, :].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        shape, (hp, wp), (ho, wo), padding, stride, dilation = ctx.geometry
        b, h, w, kh, kw, c = shape
        padded = grad.new_zeros((b, hp, wp, c))
        padded[:, padding[0]:padding[0] + ho, padding[1]:padding[1] + wo, :] = grad
        grad_cols = grad.new_empty(shape)
        for ky in range(kh):
            for kx in range(kw):
                sy, sx = _tap_slices(h, w, ky, kx, stride, dilation)
                grad_cols[:, :, :, ky, kx, :] = padded[:, sy, sx, :]
        return grad_cols, None, None, None, None


def col2im_channels_last(cols: torch.Tensor, output_size: tuple[int, int],
                         padding: tuple[int, ...], stride: tuple[int, ...],
                         dilation: tuple[int, ...], method: str | None = None) -> torch.Tensor:
    """``cols`` ``[B, H, W, kh, kw, C]`` -> ``[B, H_out, W_out, C]`` (see
    :class:`Col2imChannelsLast`). ``method``: ``taps`` (that Function: kh*kw strided adds, no
    transpose; the CPU's choice) or ``fold`` (transpose the columns to ``F.fold``'s layout: one
    copy and one kernel each way, fewer launches than kh*kw on a GPU); default by device."""
    method = method or ("fold" if cols.is_cuda else "taps")
    if method == "taps":
        return Col2imChannelsLast.apply(cols, tuple(output_size), tuple(padding), tuple(stride),
                                        tuple(dilation))
    if method != "fold":
        raise ValueError(f"method must be taps or fold, got {method!r}")
    b, h, w, kh, kw, c = cols.shape
    folded = F.fold(cols.permute(0, 5, 3, 4, 1, 2).reshape(b, c * kh * kw, h * w),
                    tuple(output_size), (kh, kw), tuple(dilation), tuple(padding), tuple(stride))
    return folded.permute(0, 2, 3, 1)
