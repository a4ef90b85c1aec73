"""Packed transposed product ``g' = g W`` (the input gradient of ``gemm``) on ``kpack`` weights.

Math (``W[n, k] = scale[n] (c[n, k] - zero[n])``, fp32 accumulation)::

    g'[m, k] = Σ_n (g[m, n] scale[n]) c[n, k]  -  Σ_n g[m, n] scale[n] zero[n]

Optionally through ``gemm``'s epilogue (``y`` = that gemm's output, ``act``, ``alpha``): ``g`` is
first replaced by ``g ⊙ act'(y) ⊙ alpha`` tile by tile as it is loaded (``gradient_prologue``),
which is the whole input gradient of ``y = act(alpha (x Wᵀ) + beta)`` in one launch instead of
three or four elementwise kernels and a product.

The scale sits on the reduction axis here, so it is folded into the activation tile
(``gs = g * scale``, in fp32, then cast to g's dtype for the tensor cores); the zero term is one
scalar per row of g, summed on the side and subtracted once after the loop. Same packed buffer as
``gemm``: the tile of codes is ``[BN, BK]`` instead of ``[BK, BN]``, read through the same
``load_codes``.

Tensors: ``g`` ``[M, N]`` float32/float16/bfloat16, any strides (``y`` likewise, ``[M, N]``,
any float dtype); ``alpha`` float32 ``[N]``; ``words`` int32
``[kpack_rows(K, bits), N]`` with row stride ``ldw``; ``scale``, ``zero`` float32 ``[N]``;
``out`` ``[M, K]`` contiguous in g's dtype; with split > 1 a float32 ``[S, M, K]`` partials
buffer (split over N).

Paths: ``dot`` -- ``[BM, BN] x [BN, BK]`` tensor-core tiles over (M, K) with optional split-N;
``gemv`` -- one row of g per program, FMA on a ``[BN, BK]`` register tile, optional split-N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qgen_infer.kernels import configs
from qgen_infer.kernels.common import (
    INT32_MAX,
    activation_id,
    check_operand,
    check_words,
    code_tile,
    dot_types,
    gradient_prologue,
    grouped_tile,
    reduction_slices,
    store_tile,
)
from qgen_infer.kernels.configs import KernelConfig
from qgen_infer.kernels.layout import PackedKWords
from qgen_infer.kernels.splitk import splitk_reduce

GROUP_M = 8


# M is not specialised on (divisible by 16 or not): every batch size shares one compile.
@triton.jit(do_not_specialize=["M"])
def gemm_t_kpack_dot_kernel(g_ptr, w_ptr, scale_ptr, zero_ptr, out_ptr, y_ptr, alpha_ptr,
                            M, N, K, ldw, stride_gm, stride_gn, stride_ym, stride_yn, n_per_split,
                            negative_slope, BITS: tl.constexpr, ACT: tl.constexpr,
                            HAS_ALPHA: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                            GROUP: tl.constexpr, WORD_DECODE: tl.constexpr):
    pid_m, pid_k = grouped_tile(tl.program_id(0), M, K, BLOCK_M, BLOCK_K, GROUP)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    k_mask = offs_k < K
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    corr = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_lo = pid_s * n_per_split
    for n0 in range(n_lo, n_lo + n_per_split, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        mask = m_mask[:, None] & n_mask[None, :]
        g = tl.load(g_ptr + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn,
                    mask=mask, other=0.0).to(tl.float32)
        g = gradient_prologue(g, y_ptr, alpha_ptr, offs_m, offs_n, mask, n_mask, stride_ym,
                              stride_yn, negative_slope, HAS_ALPHA, ACT)
        scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
        zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
        gs = g * scale[None, :]
        corr += tl.sum(gs * zero[None, :], axis=1)
        c = code_tile(w_ptr, pid_k * BLOCK_K, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS,
                      BLOCK_K, BLOCK_N, WORD_DECODE, True)
        acc = tl.dot(gs.to(DOT_DTYPE), c.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    y = acc - corr[:, None]
    store_tile(y, out_ptr, offs_m, offs_k, m_mask, k_mask, M, K, pid_s, out_ptr, out_ptr, 0.0,
               False, False, 0, PARTIAL)


@triton.jit(do_not_specialize=["M"])
def gemm_t_kpack_gemv_kernel(g_ptr, w_ptr, scale_ptr, zero_ptr, out_ptr, y_ptr, alpha_ptr,
                             M, N, K, ldw, stride_gm, stride_gn, stride_ym, stride_yn,
                             n_per_split, negative_slope, BITS: tl.constexpr, ACT: tl.constexpr,
                             HAS_ALPHA: tl.constexpr, PARTIAL: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             WORD_DECODE: tl.constexpr):
    pid_k = tl.program_id(0)
    m = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    corr = tl.zeros((BLOCK_N,), dtype=tl.float32)
    n_lo = pid_s * n_per_split
    for n0 in range(n_lo, n_lo + n_per_split, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        g = tl.load(g_ptr + m * stride_gm + offs_n * stride_gn, mask=n_mask,
                    other=0.0).to(tl.float32)
        row = m + tl.arange(0, 1)
        g = tl.reshape(gradient_prologue(g[None, :], y_ptr, alpha_ptr, row, offs_n,
                                         n_mask[None, :], n_mask, stride_ym, stride_yn,
                                         negative_slope, HAS_ALPHA, ACT), (BLOCK_N,))
        scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
        zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
        gs = g * scale
        corr += gs * zero
        c = code_tile(w_ptr, pid_k * BLOCK_K, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS,
                      BLOCK_K, BLOCK_N, WORD_DECODE, True)
        acc += gs[:, None] * c.to(tl.float32)
    y = tl.sum(acc, axis=0) - tl.sum(corr, axis=0)
    offs_m = m + tl.arange(0, 1)
    store_tile(y[None, :], out_ptr, offs_m, offs_k, offs_m < M, k_mask, M, K, pid_s, out_ptr,
               out_ptr, 0.0, False, False, 0, PARTIAL)


def _launch(g: torch.Tensor, w: PackedKWords, cfg: KernelConfig, out: torch.Tensor,
            y: torch.Tensor | None = None, alpha: torch.Tensor | None = None, act: int = 0,
            negative_slope: float = 0.0) -> torch.Tensor:
    m, n = g.shape
    k = w.k
    per, slices = reduction_slices(n, cfg.split, cfg.block_n)
    if slices * m * k > INT32_MAX:
        raise ValueError(f"M*K*split = {slices * m * k} overflows the kernels' int32 offsets")
    dst = out if slices == 1 else torch.empty((slices, m, k), device=g.device,
                                              dtype=torch.float32)
    y_arg = y if y is not None else g  # placeholders, never read without ACT / HAS_ALPHA
    args = (g, w.words, w.scale, w.zero, dst, y_arg, alpha if alpha is not None else w.scale,
            m, n, k, w.words.stride(0), g.stride(0), g.stride(1), y_arg.stride(0),
            y_arg.stride(1), per, float(negative_slope))
    common = dict(BITS=w.bits, ACT=act, HAS_ALPHA=alpha is not None,
                  PARTIAL=slices > 1, WORD_DECODE=cfg.word_decode, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    if cfg.path == "gemv":
        if m > 65535:
            raise ValueError(f"the gemv path takes M <= 65535 rows, got {m}")
        grid = (triton.cdiv(k, cfg.block_k), m, slices)
        gemm_t_kpack_gemv_kernel[grid](*args, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **common)
    else:
        dot_dtype, precision = dot_types(g.dtype)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(k, cfg.block_k), slices)
        gemm_t_kpack_dot_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                      BLOCK_K=cfg.block_k, DOT_DTYPE=dot_dtype,
                                      DOT_PRECISION=precision, GROUP=GROUP_M, **common)
    if slices > 1:
        splitk_reduce(dst, out)
    return out


def gemm_t(g: torch.Tensor, w: PackedKWords, config: KernelConfig | None = None, *,
           y: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
           activation: str = "none", negative_slope: float = 0.01) -> torch.Tensor:
    """``g @ W``: g ``[M, N]`` -> ``[M, K]`` in g's dtype. ``config`` as in ``gemm.gemm``.

    Through an epilogue: ``(g ⊙ act'(y) ⊙ alpha) @ W`` where ``y`` ``[M, N]`` is the output of
    ``gemm(x, w, alpha, beta, activation, negative_slope)`` -- that gemm's input gradient. ``y``
    is needed when ``activation`` is not ``none``; ``alpha`` float ``[N]`` is optional.
    """
    check_words(w.words)
    check_operand(g, "g", w.n, "N", w.words.device)
    act = activation_id(activation)
    if act != 0:
        if y is None:
            raise ValueError(f"activation {activation!r} needs y, the forward's output")
        check_operand(y, "y", w.n, "N", w.words.device)
        if y.shape != g.shape:
            raise ValueError(f"y has shape {tuple(y.shape)} but g has {tuple(g.shape)}")
    else:
        y = None
    m, n = g.shape
    k = w.k
    if alpha is not None:
        if alpha.shape != (n,):
            raise ValueError(f"alpha must have shape ({n},), got {tuple(alpha.shape)}")
        alpha = alpha.to(device=g.device, dtype=torch.float32).contiguous()
    out = torch.empty((m, k), device=g.device, dtype=g.dtype)
    if m == 0 or k == 0:
        return out
    if n == 0:
        return out.zero_()
    if g.numel() > INT32_MAX or w.words.numel() > INT32_MAX:
        raise ValueError("operands with more than 2**31 - 1 elements are not supported")

    def run(cfg: KernelConfig) -> torch.Tensor:
        return _launch(g, w, cfg, out, y, alpha, act, negative_slope)

    cfg = config or configs.select("gemm_t", g, w.bits, m, n, k, run)
    return run(cfg)
