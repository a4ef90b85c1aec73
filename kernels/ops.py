"""The packed products as ``torch.library`` custom ops, with fake kernels and autograd.

``torch.ops.qgen_infer.packed_gemm(x, words, scale, zero, alpha, beta, bits, k, activation,
negative_slope)`` -> ``[M, N]``, ``torch.ops.qgen_infer.packed_gemm_t(g, words, scale, zero,
bits, k)`` -> ``[M, K]`` and ``packed_gemm_t_act(g, y, words, scale, zero, alpha, bits, k,
activation, negative_slope)`` -> ``(g ⊙ act'(y) ⊙ alpha) W``, the input gradient of
``packed_gemm`` in one launch; tensors as in ``gemm`` / ``gemm_t`` (``words`` in the ``kpack``
layout, ``k`` the weight's unpadded K, checked against x's width). Opaque to torch.compile and
CUDA-graph capture, with output shapes from the fake kernels, so the solver loop around them can
be compiled or captured.

Autograd (w.r.t. the activations only; packed weights are constants): the backward of
``packed_gemm`` is ``packed_gemm_t_act`` (or, when the backward itself is differentiated,
``packed_gemm_t`` of ``grad * act'(y) * alpha`` in torch ops), the backward of
``packed_gemm_t`` is ``packed_gemm`` without epilogue; ``act'`` is written in terms of the output,
so no pre-activation is kept.
"""

from __future__ import annotations

import torch

from qgen_infer.activations import activation_grad_from_output
from qgen_infer.kernels.layout import PackedKWords


def _packed(words: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, k: int
            ) -> PackedKWords:
    return PackedKWords(words, scale, zero, bits, k)


@torch.library.custom_op("qgen_infer::packed_gemm", mutates_args=())
def packed_gemm(x: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                alpha: torch.Tensor | None, beta: torch.Tensor | None, bits: int, k: int,
                activation: str, negative_slope: float) -> torch.Tensor:
    from qgen_infer.kernels.gemm import gemm

    return gemm(x, _packed(words, scale, zero, bits, k), alpha, beta, activation, negative_slope)


@packed_gemm.register_fake
def _packed_gemm_fake(x, words, scale, zero, alpha, beta, bits, k, activation, negative_slope):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == k, lambda: f"x has {x.shape[1]} columns but the weight's K is {k}")
    return x.new_empty((x.shape[0], scale.shape[0]))


@torch.library.custom_op("qgen_infer::packed_gemm_t", mutates_args=())
def packed_gemm_t(g: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  bits: int, k: int) -> torch.Tensor:
    from qgen_infer.kernels.gemm_t import gemm_t

    return gemm_t(g, _packed(words, scale, zero, bits, k))


@packed_gemm_t.register_fake
def _packed_gemm_t_fake(g, words, scale, zero, bits, k):
    torch._check(g.dim() == 2, lambda: f"g must be 2-D, got {g.dim()}-D")
    return g.new_empty((g.shape[0], k))


@torch.library.custom_op("qgen_infer::packed_gemm_t_act", mutates_args=())
def packed_gemm_t_act(g: torch.Tensor, y: torch.Tensor, words: torch.Tensor, scale: torch.Tensor,
                      zero: torch.Tensor, alpha: torch.Tensor | None, bits: int, k: int,
                      activation: str, negative_slope: float) -> torch.Tensor:
    from qgen_infer.kernels.gemm_t import gemm_t

    return gemm_t(g, _packed(words, scale, zero, bits, k), y=y, alpha=alpha,
                  activation=activation, negative_slope=negative_slope)


@packed_gemm_t_act.register_fake
def _packed_gemm_t_act_fake(g, y, words, scale, zero, alpha, bits, k, activation,
                            negative_slope):
    torch._check(g.dim() == 2, lambda: f"g must be 2-D, got {g.dim()}-D")
    torch._check(y.shape == g.shape, lambda: f"y {tuple(y.shape)} must match g {tuple(g.shape)}")
    return g.new_empty((g.shape[0], k))


def _act_grad(y: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor | None:
    """d act / d pre-activation from the output; None for the identity (skips a multiply)."""
    if activation == "none":
        return None
    return activation_grad_from_output(y, activation, negative_slope)


def _gemm_setup(ctx, inputs, output):
    x, words, scale, zero, alpha, beta, bits, k, activation, negative_slope = inputs
    ctx.save_for_backward(words, scale, zero, alpha, output)
    ctx.bits, ctx.k, ctx.activation, ctx.slope = bits, k, activation, negative_slope


def _gemm_backward(ctx, grad):
    words, scale, zero, alpha, y = ctx.saved_tensors
    if not torch.is_grad_enabled():  # a first-order backward: one fused launch
        gx = packed_gemm_t_act(grad.contiguous(), y, words, scale, zero, alpha, ctx.bits, ctx.k,
                               ctx.activation, ctx.slope)
        return gx, None, None, None, None, None, None, None, None, None
    d = _act_grad(y, ctx.activation, ctx.slope)
    if d is not None:
        grad = grad * d
    if alpha is not None:
        grad = grad * alpha.to(grad.dtype)
    gx = packed_gemm_t(grad.contiguous(), words, scale, zero, ctx.bits, ctx.k)
    return gx, None, None, None, None, None, None, None, None, None


def _gemm_t_setup(ctx, inputs, output):
    g, words, scale, zero, bits, k = inputs
    ctx.save_for_backward(words, scale, zero)
    ctx.bits, ctx.k = bits, k


def _gemm_t_backward(ctx, grad):
    words, scale, zero = ctx.saved_tensors
    gg = packed_gemm(grad.contiguous(), words, scale, zero, None, None, ctx.bits, ctx.k,
                     "none", 0.0)
    return gg, None, None, None, None, None


packed_gemm.register_autograd(_gemm_backward, setup_context=_gemm_setup)
packed_gemm_t.register_autograd(_gemm_t_backward, setup_context=_gemm_t_setup)
