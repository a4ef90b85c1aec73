"""Packed forward product ``y = act(alpha * (x Wᵀ) + beta)`` on ``kpack`` weights.

Math (``W[n, k] = scale[n] (c[n, k] - zero[n])``, fp32 accumulation)::

    y[m, n] = act(alpha[n] * scale[n] * (Σ_k x[m, k] c[n, k] - zero[n] Σ_k x[m, k]) + beta[n])

The K loop multiplies activations by the raw codes (exact small integers in every activation
dtype, so tensor cores see them unrounded) and sums the rows of ``x`` on the side; the scale/zero
correction and the epilogue run once, after the loop.

Tensors: ``x`` ``[M, K]`` float32/float16/bfloat16, any strides; ``words`` int32
``[kpack_rows(K, bits), N]`` with row stride ``ldw`` (``layout``); ``scale``, ``zero``,
``alpha``, ``beta`` float32 ``[N]``; ``out`` ``[M, N]`` contiguous in x's dtype; with split > 1 a
float32 ``[S, M, N]`` partials buffer.

Paths: ``dot`` -- ``[BM, BK] x [BK, BN]`` tensor-core tiles, grouped program order, optional
split-K (for large M, and M <= 16 with BM = 16); ``gemv`` -- one row of x per program, FMA over a
``[BK, BN]`` register tile reduced once at the end, optional split-K (tiny M: no padding of M).
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
def gemm_kpack_dot_kernel(x_ptr, w_ptr, scale_ptr, zero_ptr, alpha_ptr, beta_ptr, out_ptr,
                          M, N, K, ldw, stride_xm, stride_xk, k_per_split, negative_slope,
                          BITS: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr,
                          ACT: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          GROUP: tl.constexpr, WORD_DECODE: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    k_lo = pid_s * k_per_split
    for k0 in range(k_lo, k_lo + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        c = code_tile(w_ptr, k0, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS, BLOCK_K, BLOCK_N,
                      WORD_DECODE, False)
        acc = tl.dot(x.to(DOT_DTYPE), c.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        xsum += tl.sum(x.to(tl.float32), axis=1)
    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
    y = scale[None, :] * (acc - zero[None, :] * xsum[:, None])
    store_tile(y, out_ptr, offs_m, offs_n, m_mask, n_mask, M, N, pid_s, alpha_ptr, beta_ptr,
               negative_slope, HAS_ALPHA, HAS_BETA, ACT, PARTIAL)


@triton.jit(do_not_specialize=["M"])
def gemm_kpack_gemv_kernel(x_ptr, w_ptr, scale_ptr, zero_ptr, alpha_ptr, beta_ptr, out_ptr,
                           M, N, K, ldw, stride_xm, stride_xk, k_per_split, negative_slope,
                           BITS: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr,
                           ACT: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, WORD_DECODE: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    # 2-D accumulators, reduced once after the loop: one cross-lane reduction per program
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    xacc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    k_lo = pid_s * k_per_split
    for k0 in range(k_lo, k_lo + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + m * stride_xm + offs_k * stride_xk, mask=k_mask,
                    other=0.0).to(tl.float32)
        c = code_tile(w_ptr, k0, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS, BLOCK_K, BLOCK_N,
                      WORD_DECODE, False)
        acc += x[:, None] * c.to(tl.float32)
        xacc += x
    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
    y = scale * (tl.sum(acc, axis=0) - zero * tl.sum(xacc, axis=0))
    offs_m = m + tl.arange(0, 1)
    store_tile(y[None, :], out_ptr, offs_m, offs_n, offs_m < M, n_mask, M, N, pid_s, alpha_ptr,
               beta_ptr, negative_slope, HAS_ALPHA, HAS_BETA, ACT, PARTIAL)


def _launch(x: torch.Tensor, w: PackedKWords, alpha: torch.Tensor | None,
            beta: torch.Tensor | None, act: int, negative_slope: float, cfg: KernelConfig,
            out: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    n = w.n
    per, slices = reduction_slices(k, cfg.split, cfg.block_k)
    if slices * m * n > INT32_MAX:
        raise ValueError(f"M*N*split = {slices * m * n} overflows the kernels' int32 offsets")
    dst = out if slices == 1 else torch.empty((slices, m, n), device=x.device,
                                              dtype=torch.float32)
    alpha_arg = alpha if alpha is not None else w.scale  # placeholder, never read
    beta_arg = beta if beta is not None else w.scale
    common = dict(BITS=w.bits, HAS_ALPHA=alpha is not None, HAS_BETA=beta is not None, ACT=act,
                  PARTIAL=slices > 1, WORD_DECODE=cfg.word_decode, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    args = (x, w.words, w.scale, w.zero, alpha_arg, beta_arg, dst, m, n, k, w.words.stride(0),
            x.stride(0), x.stride(1), per, float(negative_slope))
    if cfg.path == "gemv":
        if m > 65535:
            raise ValueError(f"the gemv path takes M <= 65535 rows, got {m}")
        grid = (triton.cdiv(n, cfg.block_n), m, slices)
        gemm_kpack_gemv_kernel[grid](*args, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **common)
    else:
        dot_dtype, precision = dot_types(x.dtype)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), slices)
        gemm_kpack_dot_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                    BLOCK_K=cfg.block_k, DOT_DTYPE=dot_dtype,
                                    DOT_PRECISION=precision, GROUP=GROUP_M, **common)
    if slices > 1:
        splitk_reduce(dst, out, alpha, beta, act, negative_slope)
    return out


def _vector(v: torch.Tensor | None, n: int, name: str, device: torch.device
            ) -> torch.Tensor | None:
    if v is None:
        return None
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
    return v.to(device=device, dtype=torch.float32).contiguous()


def gemm(x: torch.Tensor, w: PackedKWords, alpha: torch.Tensor | None = None,
         beta: torch.Tensor | None = None, activation: str = "none",
         negative_slope: float = 0.01, config: KernelConfig | None = None) -> torch.Tensor:
    """``act(alpha[n] * (x @ Wᵀ)[m, n] + beta[n])``: x ``[M, K]`` -> ``[M, N]`` in x's dtype.

    ``config`` forces a launch config (tests, benchmarks); by default ``configs.select`` picks
    one (fixed under the interpreter, tuned or cached on a GPU).
    """
    check_words(w.words)
    check_operand(x, "x", w.k, "K", w.words.device)
    act = activation_id(activation)
    m, k = x.shape
    n = w.n
    alpha = _vector(alpha, n, "alpha", x.device)
    beta = _vector(beta, n, "beta", x.device)
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0 or n == 0:
        return out
    if x.numel() > INT32_MAX or w.words.numel() > INT32_MAX:
        raise ValueError("operands with more than 2**31 - 1 elements are not supported")

    def run(cfg: KernelConfig) -> torch.Tensor:
        return _launch(x, w, alpha, beta, act, negative_slope, cfg, out)

    cfg = config or configs.select("gemm", x, w.bits, m, n, k, run)
    return run(cfg)
