"""Conv2d and ConvTranspose2d layers on the ``triton`` backend as implicit GEMM
(``qgen_infer.kernels.conv``): no im2col, no col2im, the epilogue fused, forward and input
gradient each one launch. Opt-in (``QGEN_TRITON_IMPLICIT_CONV=1`` when the backend is made, or
``TritonBackend(implicit_conv=True)``) until a GPU measures it against the per-pixel GEMM path.

Each layer keeps two packings of its codes (a few bits per weight each): ``forward``, the
``[C_out, C_in, kh, kw]`` weight of the layer's own direction, and ``backward``, the weight of
the other direction, whose convolution is the input gradient (``kernels/conv.py``)::

    Conv2d W [C_out, C_in]:          forward V = W,                  backward V = W.permute(1, 0)
    ConvTranspose2d W [C_in, C_out]: forward V = W.permute(1, 0),    backward V = W

with the per-output-channel scale on ``n`` forward and on the reduction channel ``c`` backward.
The gradient is formed as in ``packed_ops``: ``g ⊙ act'(y) ⊙ alpha``, then one convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from qgen_infer.engine.backend import Epilogue
from qgen_infer.engine.packed_ops import _epilogue_backward
from qgen_infer.format import unpack_codes

ENV = "QGEN_TRITON_IMPLICIT_CONV"


@dataclass(frozen=True)
class ConvPlan:
    """A layer's two packed weights and its geometry (pairs (h, w))."""

    forward: Any  # kernels.conv.PackedConvWeight
    backward: Any
    transposed: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output_padding: tuple[int, int]


def plan_conv(module: Any, device: torch.device) -> ConvPlan:
    """The :class:`ConvPlan` of a ``PackedConv2d`` / ``PackedConvTranspose2d``."""
    from qgen_infer.kernels.conv import PackedConvWeight

    codes = unpack_codes(module.packed_codes, module.weight_shape, module.bits).cpu()
    transposed = module.kind == "conv_transpose2d"
    own, other = (codes.permute(1, 0, 2, 3), codes) if transposed else (
        codes, codes.permute(1, 0, 2, 3))
    scale, zero = module.scale.cpu(), module.zero.cpu()

    def pack(c: torch.Tensor, on_k: bool) -> PackedConvWeight:
        return PackedConvWeight.from_codes(c.contiguous(), scale, zero, module.bits, on_k, device)

    return ConvPlan(pack(own, False), pack(other, True), transposed, module.stride,
                    module.padding, module.dilation,
                    tuple(getattr(module, "output_padding", (0, 0))))


def _run(x: torch.Tensor, weight: Any, transposed: bool, plan: ConvPlan,
         output_padding: tuple[int, int], epilogue: Epilogue | None) -> torch.Tensor:
    from qgen_infer.kernels.conv import conv2d, conv_transpose2d

    ep = epilogue or Epilogue()
    kw = dict(alpha=ep.alpha, beta=ep.beta, activation=ep.activation,
              negative_slope=ep.negative_slope)
    if transposed:
        return conv_transpose2d(x, weight, plan.stride, plan.padding, plan.dilation,
                                output_padding, **kw)
    return conv2d(x, weight, plan.stride, plan.padding, plan.dilation, **kw)


class PackedConv(torch.autograd.Function):
    """``y = act(alpha * conv(x) + beta)``; backward: the other direction's convolution of
    ``∂L/∂y ⊙ act'(y) ⊙ alpha`` (first order: the solver needs ∇z only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, plan: ConvPlan, epilogue: Epilogue) -> torch.Tensor:
        y = _run(x, plan.forward, plan.transposed, plan, plan.output_padding, epilogue)
        ctx.save_for_backward(y)
        ctx.plan, ctx.epilogue, ctx.in_hw = plan, epilogue, tuple(x.shape[-2:])
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        plan = ctx.plan
        g = _epilogue_backward(grad_y, y, ctx.epilogue, channel_dim=1)
        # the input gradient of conv2d is a transposed convolution back to x's size
        pad = (0, 0)
        if not plan.transposed:
            kh, kw = plan.backward.kernel_size
            pad = tuple(  # type: ignore[assignment]
                size - ((g.shape[2 + a] - 1) * plan.stride[a] - 2 * plan.padding[a]
                        + plan.dilation[a] * ((kh, kw)[a] - 1) + 1)
                for a, size in enumerate(ctx.in_hw))
        return _run(g, plan.backward, not plan.transposed, plan, pad, None), None, None


def packed_conv(x: torch.Tensor, plan: ConvPlan, epilogue: Epilogue) -> torch.Tensor:
    return PackedConv.apply(x, plan, epilogue)
