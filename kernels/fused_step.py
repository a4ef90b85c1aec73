"""One whole solver step of the MLP model in one launch: packed generator forward and back, dense
sensing net forward and back, residual, proximal update, hard threshold and sphere projection.

Math, per batch row (``G = g3 ∘ g2 ∘ g1`` packed, ``A = s3 ∘ s2 ∘ s1`` dense, each layer
``out = act(alpha ⊙ (W in) + beta)``; ``W = scale (c - zero)`` for the packed ones)::

    x = G(z),  r = A(x) - y,  loss = ‖r‖²
    g = ∇_z loss  (back through s3, s2, s1, g3, g2, g1: g_in = (g_out ⊙ act'(out) ⊙ alpha) W)
    v = z - β g;  v ← v ⊙ [|v| ≥ t_s(v)];  z' = v / max(‖v‖, eps) when projecting

``t_s(v)`` is the s-th largest ``|v|`` of the row, found exactly by bisection on the IEEE bit
patterns of ``|v|`` (monotone for non-negative floats; 31 halvings of [0, 2³¹)), so the kept
set is the one ``qgen_infer.solve.hard_threshold`` keeps (ties at ``t_s`` included).

Launch: one program per ``BLOCK_M`` rows of the batch; each walks the twelve products in order,
tile by tile (``[BLOCK_M, BLOCK_N]`` outputs, ``BLOCK_K`` reduction steps; ``tl.dot`` on fp32 or
fp16 operands when ``BLOCK_M >= 16``, FMA below; fp32 accumulation), with the packed weights
decoded from their ``kpack`` words in registers (``common.code_tile``). Activations live in a
per-row fp32 scratch in global memory (``[B, scratch_width(...)]``, L2-resident at MNIST sizes),
one barrier between layers. No other kernel runs during the step; ``loss`` gets each row's
``‖A(G(z)) - y‖²`` before the update.

Tensors: ``z`` fp32 ``[B, D]`` contiguous; ``y`` fp32 ``[B, M]`` contiguous; packed layers as
``PackedKWords`` (``layout``) with fp32 ``alpha``/``beta`` ``[N]`` or None; dense weights
``[N, K]`` contiguous in the dot dtype, fp32 biases; out ``z'`` fp32 ``[B, D]``; ``loss`` fp32
``[B]``. ``reference_step`` is the same step in plain torch (fp64), which the tests hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qgen_infer.kernels.common import (
    activate,
    activation_id,
    apply_epilogue,
    check_words,
    code_tile,
    gradient_prologue,
)
from qgen_infer.kernels.layout import PackedKWords, dequantize_kwords


@dataclass(frozen=True)
class PackedLayerOp:
    """A generator layer: ``act(alpha ⊙ (x Wᵀ) + beta)`` on a packed weight."""

    weight: PackedKWords
    alpha: torch.Tensor | None
    beta: torch.Tensor | None
    activation: str
    negative_slope: float


@dataclass(frozen=True)
class DenseLayerOp:
    """A sensing-net layer: ``act(x Wᵀ + bias)``, ``weight`` ``[N, K]``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str
    negative_slope: float


@dataclass(frozen=True)
class MlpStep:
    """The operands of one step: three packed layers, three dense ones, the solver settings."""

    generator: tuple[PackedLayerOp, PackedLayerOp, PackedLayerOp]
    sensing: tuple[DenseLayerOp, DenseLayerOp, DenseLayerOp]
    step_size: float
    sparsity: int | None
    project: bool
    eps: float = 1e-12

    def widths(self) -> tuple[int, ...]:
        """``(D, H1, H2, P, S1, S2, M)``: latent, hidden, image, sensing hidden, measurements."""
        g, s = self.generator, self.sensing
        return (g[0].weight.k, g[0].weight.n, g[1].weight.n, g[2].weight.n,
                s[0].weight.shape[0], s[1].weight.shape[0], s[2].weight.shape[0])


def scratch_width(step: MlpStep) -> int:
    """fp32 scratch per row: the six layer outputs and two gradient buffers."""
    d, h1, h2, p, s1, s2, m = step.widths()
    return h1 + h2 + p + s1 + s2 + m + 2 * max(d, h1, h2, p, s1, s2, m)


# --- device functions -------------------------------------------------------------------------

@triton.jit
def _mm(a, b, acc, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
        USE_DOT: tl.constexpr):
    # acc + a @ b on operands rounded to DOT_DTYPE: tl.dot (BLOCK_M >= 16), else FMA and a sum
    if USE_DOT:
        acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    else:
        a32 = a.to(DOT_DTYPE).to(tl.float32)
        b32 = b.to(DOT_DTYPE).to(tl.float32)
        acc += tl.sum(a32[:, :, None] * b32[None, :, :], axis=1)
    return acc


@triton.jit
def _layer_forward(in_ptr, in_ld, out_ptr, out_ld, rows, row_mask, w_ptr, ldw, scale_ptr,
                   zero_ptr, alpha_ptr, beta_ptr, N, K, negative_slope,
                   PACKED: tl.constexpr, BITS: tl.constexpr, HAS_ALPHA: tl.constexpr,
                   HAS_BETA: tl.constexpr, ACT: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, USE_DOT: tl.constexpr):
    # out[rows, :N] = act(alpha * (in[rows, :K] Wᵀ) + beta), N tile by N tile
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        xsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < K
            x = tl.load(in_ptr + rows[:, None] * in_ld + offs_k[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            if PACKED:
                c = code_tile(w_ptr, k0, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS, BLOCK_K,
                              BLOCK_N, True, False)
                acc = _mm(x, c, acc, DOT_DTYPE, DOT_PRECISION, USE_DOT)
                xsum += tl.sum(x, axis=1)
            else:
                w = tl.load(w_ptr + offs_n[None, :] * ldw + offs_k[:, None],
                            mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                acc = _mm(x, w, acc, DOT_DTYPE, DOT_PRECISION, USE_DOT)
        if PACKED:
            scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
            zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
            acc = scale[None, :] * (acc - zero[None, :] * xsum[:, None])
        y = apply_epilogue(acc, offs_n[None, :], n_mask[None, :], alpha_ptr, beta_ptr,
                           negative_slope, HAS_ALPHA, HAS_BETA, ACT)
        tl.store(out_ptr + rows[:, None] * out_ld + offs_n[None, :], y,
                 mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _layer_backward(g_ptr, y_ptr, act_ld, out_ptr, out_ld, rows, row_mask, w_ptr, ldw,
                    scale_ptr, zero_ptr, alpha_ptr, N, K, negative_slope,
                    PACKED: tl.constexpr, BITS: tl.constexpr, HAS_ALPHA: tl.constexpr,
                    ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    USE_DOT: tl.constexpr):
    # out[rows, :K] = (g ⊙ act'(y) ⊙ alpha)[rows, :N] W, K tile by K tile; g and y (the layer's
    # output) share the row stride act_ld
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        corr = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < N
            mask = row_mask[:, None] & n_mask[None, :]
            g = tl.load(g_ptr + rows[:, None] * act_ld + offs_n[None, :], mask=mask, other=0.0)
            g = gradient_prologue(g, y_ptr, alpha_ptr, rows, offs_n, mask, n_mask, act_ld, 1,
                                  negative_slope, HAS_ALPHA, ACT)
            if PACKED:
                scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
                zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
                g = g * scale[None, :]
                corr += tl.sum(g * zero[None, :], axis=1)
                w = code_tile(w_ptr, k0, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS, BLOCK_K,
                              BLOCK_N, True, True)
            else:
                w = tl.load(w_ptr + offs_n[:, None] * ldw + offs_k[None, :],
                            mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc = _mm(g, w, acc, DOT_DTYPE, DOT_PRECISION, USE_DOT)
        tl.store(out_ptr + rows[:, None] * out_ld + offs_k[None, :], acc - corr[:, None],
                 mask=row_mask[:, None] & k_mask[None, :])


@triton.jit
def _proximal_update(z_ptr, grad_ptr, grad_ld, out_ptr, rows, row_mask, D, step_size, sparsity,
                     eps, SPARSE: tl.constexpr, PROJECT: tl.constexpr, BLOCK_D: tl.constexpr):
    # z' = P_s(z - beta grad), then z' / max(|z'|, eps): one [BLOCK_M, BLOCK_D] tile per row block
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d < D)[None, :]
    z = tl.load(z_ptr + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    g = tl.load(grad_ptr + rows[:, None] * grad_ld + offs_d[None, :], mask=mask, other=0.0)
    v = z - step_size * g
    if SPARSE:
        # bit patterns of |v|: order-preserving ints; padding gets -1, below every candidate
        bits = tl.where(mask, tl.abs(v).to(tl.int32, bitcast=True), -1)
        lo = tl.zeros_like(rows)  # count(bits >= lo) >= s always (s <= D)
        hi = tl.zeros_like(rows) + 0x7F800001  # above +inf: count(bits >= hi) = 0 < s
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            ok = tl.sum((bits >= mid[:, None]).to(tl.int32), axis=1) >= sparsity
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid)
        v = tl.where(bits >= lo[:, None], v, 0.0)
    if PROJECT:
        norm = tl.sqrt(tl.sum(v * v, axis=1))
        v = v / tl.maximum(norm, eps)[:, None]
    tl.store(out_ptr + rows[:, None] * D + offs_d[None, :], v, mask=mask)


@triton.jit
def mlp_step_kernel(
        z_ptr, y_ptr, out_ptr, loss_ptr, scr_ptr, scr_ld, B, step_size, sparsity, eps,
        # generator layers: words, ldw, scale, zero, alpha, beta, slope
        w1, ldw1, sc1, ze1, al1, be1, sl1, w2, ldw2, sc2, ze2, al2, be2, sl2,
        w3, ldw3, sc3, ze3, al3, be3, sl3,
        # sensing layers: weight [N, K], bias, slope
        v1, b1, t1, v2, b2, t2, v3, b3, t3,
        D, H1, H2, P, S1, S2, M,
        o_h1, o_h2, o_x, o_a1, o_a2, o_r, o_ga, o_gb,
        BITS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr, ACT3: tl.constexpr,
        HA1: tl.constexpr, HA2: tl.constexpr, HA3: tl.constexpr,
        HB1: tl.constexpr, HB2: tl.constexpr, HB3: tl.constexpr,
        SACT1: tl.constexpr, SACT2: tl.constexpr, SACT3: tl.constexpr,
        SB1: tl.constexpr, SB2: tl.constexpr, SB3: tl.constexpr,
        SPARSE: tl.constexpr, PROJECT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
        DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_DOT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = rows < B
    h1 = scr_ptr + o_h1
    h2 = scr_ptr + o_h2
    x = scr_ptr + o_x
    a1 = scr_ptr + o_a1
    a2 = scr_ptr + o_a2
    r = scr_ptr + o_r
    ga = scr_ptr + o_ga
    gb = scr_ptr + o_gb
    # forward: G (packed), then A (dense)
    _layer_forward(z_ptr, D, h1, scr_ld, rows, rm, w1, ldw1, sc1, ze1, al1, be1, H1, D, sl1,
                   True, BITS, HA1, HB1, ACT1, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                   DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_forward(h1, scr_ld, h2, scr_ld, rows, rm, w2, ldw2, sc2, ze2, al2, be2, H2, H1, sl2,
                   True, BITS, HA2, HB2, ACT2, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                   DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_forward(h2, scr_ld, x, scr_ld, rows, rm, w3, ldw3, sc3, ze3, al3, be3, P, H2, sl3,
                   True, BITS, HA3, HB3, ACT3, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                   DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_forward(x, scr_ld, a1, scr_ld, rows, rm, v1, P, v1, v1, v1, b1, S1, P, t1,
                   False, BITS, False, SB1, SACT1, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                   DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_forward(a1, scr_ld, a2, scr_ld, rows, rm, v2, S1, v2, v2, v2, b2, S2, S1, t2,
                   False, BITS, False, SB2, SACT2, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                   DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_forward(a2, scr_ld, r, scr_ld, rows, rm, v3, S2, v3, v3, v3, b3, M, S2, t3,
                   False, BITS, False, SB3, SACT3, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                   DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    # residual: loss = |A(x) - y|^2 per row, d loss / d A(x) = 2 (A(x) - y) into ga
    offs_r = tl.arange(0, BLOCK_R)
    mask = rm[:, None] & (offs_r < M)[None, :]
    res = (tl.load(r + rows[:, None] * scr_ld + offs_r[None, :], mask=mask, other=0.0)
           - tl.load(y_ptr + rows[:, None] * M + offs_r[None, :], mask=mask, other=0.0))
    tl.store(loss_ptr + rows, tl.sum(res * res, axis=1), mask=rm)
    tl.store(ga + rows[:, None] * scr_ld + offs_r[None, :], 2.0 * res, mask=mask)
    tl.debug_barrier()
    # backward: A's layers, then G's, ping-ponging between the two gradient buffers
    _layer_backward(ga, r, scr_ld, gb, scr_ld, rows, rm, v3, S2, v3, v3, v3, M, S2, t3,
                    False, BITS, False, SACT3, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                    DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_backward(gb, a2, scr_ld, ga, scr_ld, rows, rm, v2, S1, v2, v2, v2, S2, S1, t2,
                    False, BITS, False, SACT2, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                    DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_backward(ga, a1, scr_ld, gb, scr_ld, rows, rm, v1, P, v1, v1, v1, S1, P, t1,
                    False, BITS, False, SACT1, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE,
                    DOT_PRECISION, USE_DOT)
    tl.debug_barrier()
    _layer_backward(gb, x, scr_ld, ga, scr_ld, rows, rm, w3, ldw3, sc3, ze3, al3, P, H2, sl3,
                    True, BITS, HA3, ACT3, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE, DOT_PRECISION,
                    USE_DOT)
    tl.debug_barrier()
    _layer_backward(ga, h2, scr_ld, gb, scr_ld, rows, rm, w2, ldw2, sc2, ze2, al2, H2, H1, sl2,
                    True, BITS, HA2, ACT2, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE, DOT_PRECISION,
                    USE_DOT)
    tl.debug_barrier()
    _layer_backward(gb, h1, scr_ld, ga, scr_ld, rows, rm, w1, ldw1, sc1, ze1, al1, H1, D, sl1,
                    True, BITS, HA1, ACT1, BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE, DOT_PRECISION,
                    USE_DOT)
    tl.debug_barrier()
    _proximal_update(z_ptr, ga, scr_ld, out_ptr, rows, rm, D, step_size, sparsity, eps, SPARSE,
                     PROJECT, BLOCK_D)


# --- launcher and reference -------------------------------------------------------------------

BLOCK_M = 16  # rows of the batch per program by default: the smallest tl.dot tile
BLOCK_N = 32
BLOCK_K = 32  # whole words of every width per column (the word decode needs >= 32)
# 8 warps: with 4, the [16, 1024] tile of the update spilled ~300 B per thread when compiled for
# sm_90 (bench/fused_step_resources.py); with 8 none spill
NUM_WARPS = 8


def _check(step: MlpStep, z: torch.Tensor, y: torch.Tensor, dot_dtype: torch.dtype) -> None:
    d, h1, h2, p, s1, s2, m = step.widths()
    chain = [(lay.weight.k, lay.weight.n) for lay in step.generator]
    chain += [tuple(lay.weight.shape[::-1]) for lay in step.sensing]
    for (_, n_prev), (k, _) in zip(chain, chain[1:], strict=False):
        if k != n_prev:
            raise ValueError(f"layer widths do not chain: {chain}")
    bits = {lay.weight.bits for lay in step.generator}
    if len(bits) != 1:
        raise ValueError(f"the generator's layers must share one bit width, got {sorted(bits)}")
    for lay in step.generator:
        check_words(lay.weight.words)
    for lay in step.sensing:
        if not lay.weight.is_contiguous() or lay.weight.dtype != dot_dtype:
            raise ValueError(f"dense weights must be contiguous {dot_dtype}")
    for t, width, name in ((z, d, "z"), (y, m, "y")):
        if t.dtype != torch.float32 or t.ndim != 2 or t.shape[1] != width or \
                not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous float32 [B, {width}], got {t.dtype} "
                             f"{tuple(t.shape)}")
    if z.shape[0] != y.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but y has {y.shape[0]}")
    if step.sparsity is not None and not 1 <= step.sparsity:
        raise ValueError(f"sparsity must be >= 1, got {step.sparsity}")


def mlp_step(z: torch.Tensor, y: torch.Tensor, step: MlpStep, *,
             scratch: torch.Tensor | None = None, out: torch.Tensor | None = None,
             loss: torch.Tensor | None = None, dot_dtype: torch.dtype = torch.float32,
             block_m: int = BLOCK_M, num_warps: int = NUM_WARPS
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused step: ``(z', loss)`` with ``loss[b] = ‖A(G(z_b)) - y_b‖²`` before the update.

    ``scratch`` (fp32 ``[B, scratch_width(step)]``), ``out`` and ``loss`` may be given to reuse
    buffers (a CUDA graph needs fixed addresses). ``dot_dtype``: the products' operand type,
    float32 (IEEE, or TF32 where torch allows it) or float16 (tensor cores; the dense weights
    must then be fp16). ``block_m``: batch rows per program, a power of two; 16 or more run
    the products on ``tl.dot`` (tensor cores), fewer on FMA, which launches more programs for
    the same batch (256 rows: 16 programs of 16 rows, or 64 of 4, on a 132-SM GPU).
    """
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    _check(step, z, y, dot_dtype)
    d, h1, h2, p, s1, s2, m = step.widths()
    b = z.shape[0]
    width = scratch_width(step)
    scratch = torch.empty((b, width), device=z.device, dtype=torch.float32) if scratch is None \
        else scratch
    out = torch.empty_like(z) if out is None else out
    loss = torch.empty(b, device=z.device, dtype=torch.float32) if loss is None else loss
    if b == 0:
        return out, loss
    offsets = [0]
    for w in (h1, h2, p, s1, s2, m, max(d, h1, h2, p, s1, s2, m)):
        offsets.append(offsets[-1] + w)
    g, s = step.generator, step.sensing
    gen_args = []
    for lay in g:
        pw = lay.weight
        gen_args += [pw.words, pw.words.stride(0), pw.scale, pw.zero,
                     lay.alpha if lay.alpha is not None else pw.scale,
                     lay.beta if lay.beta is not None else pw.scale, float(lay.negative_slope)]
    sense_args = []
    for lay in s:
        sense_args += [lay.weight, lay.bias if lay.bias is not None else lay.weight,
                       float(lay.negative_slope)]
    if dot_dtype == torch.float16:
        dot, precision = tl.float16, "tf32"
    else:
        dot = tl.float32
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    sparse = step.sparsity is not None and step.sparsity < d
    grid = (triton.cdiv(b, block_m),)
    mlp_step_kernel[grid](
        z, y, out, loss, scratch, scratch.stride(0), b, float(step.step_size),
        int(step.sparsity or 0), float(step.eps), *gen_args, *sense_args,
        d, h1, h2, p, s1, s2, m, *offsets,
        BITS=g[0].weight.bits,
        ACT1=activation_id(g[0].activation), ACT2=activation_id(g[1].activation),
        ACT3=activation_id(g[2].activation),
        HA1=g[0].alpha is not None, HA2=g[1].alpha is not None, HA3=g[2].alpha is not None,
        HB1=g[0].beta is not None, HB2=g[1].beta is not None, HB3=g[2].beta is not None,
        SACT1=activation_id(s[0].activation), SACT2=activation_id(s[1].activation),
        SACT3=activation_id(s[2].activation),
        SB1=s[0].bias is not None, SB2=s[1].bias is not None, SB3=s[2].bias is not None,
        SPARSE=sparse, PROJECT=bool(step.project), BLOCK_M=block_m, BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K, BLOCK_D=triton.next_power_of_2(d),
        BLOCK_R=max(16, triton.next_power_of_2(m)), DOT_DTYPE=dot, DOT_PRECISION=precision,
        USE_DOT=block_m >= 16, num_warps=num_warps)
    return out, loss


def reference_step(z: torch.Tensor, y: torch.Tensor, step: MlpStep
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same step in plain torch, fp64 on the CPU, gradient by autograd: ``(z', loss)``."""

    zz = z.detach().cpu().double().requires_grad_(True)
    h = zz
    for lay in step.generator:
        h = h @ dequantize_kwords(lay.weight).t()
        if lay.alpha is not None:
            h = h * lay.alpha.cpu().double()
        if lay.beta is not None:
            h = h + lay.beta.cpu().double()
        h = activate(h, lay.activation, lay.negative_slope)
    for lay in step.sensing:
        h = h @ lay.weight.cpu().double().t()
        if lay.bias is not None:
            h = h + lay.bias.cpu().double()
        h = activate(h, lay.activation, lay.negative_slope)
    loss = (h - y.cpu().double()).pow(2).sum(dim=1)
    (grad,) = torch.autograd.grad(loss.sum(), zz)
    v = zz.detach() - step.step_size * grad
    if step.sparsity is not None and step.sparsity < v.shape[1]:
        t = v.abs().topk(step.sparsity, dim=1).values[:, -1:]
        v = v * (v.abs() >= t)
    if step.project:
        v = v / v.norm(dim=1, keepdim=True).clamp_min(step.eps)
    return v, loss.detach()
