"""Split-K reduction: ``out[m, n] = act(alpha[n] * Σ_s part[s, m, n] + beta[n])``.

``part``: float32 ``[S, M, N]`` contiguous (partials already scale/zero-corrected, so the sum is
linear in the slices); ``alpha``, ``beta``: float32 ``[N]`` (optional); ``out``: ``[M, N]``
contiguous, any float dtype. Deterministic (no atomics), which keeps results bitwise reproducible
run to run and the op capturable in a CUDA graph. Used by ``gemm`` (with its epilogue) and
``gemm_t`` (no epilogue; there ``N`` is the output width K).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qgen_infer.kernels.common import apply_epilogue

BLOCK = 1024


# MN changes with the batch: not specialised on, so every batch size shares one compile.
@triton.jit(do_not_specialize=["MN"])
def splitk_reduce_kernel(part_ptr, alpha_ptr, beta_ptr, out_ptr, MN, N, S, negative_slope,
                         HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr, ACT: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(S):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    n_idx = offs % N
    y = apply_epilogue(acc, n_idx, mask, alpha_ptr, beta_ptr, negative_slope,
                       HAS_ALPHA, HAS_BETA, ACT)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def splitk_reduce(part: torch.Tensor, out: torch.Tensor, alpha: torch.Tensor | None = None,
                  beta: torch.Tensor | None = None, act: int = 0, negative_slope: float = 0.0
                  ) -> torch.Tensor:
    s, m, n = part.shape
    mn = m * n
    dummy = part  # never read when HAS_ALPHA / HAS_BETA is false
    grid = (triton.cdiv(mn, BLOCK),)
    splitk_reduce_kernel[grid](part, alpha if alpha is not None else dummy,
                               beta if beta is not None else dummy, out, mn, n, s,
                               float(negative_slope), HAS_ALPHA=alpha is not None,
                               HAS_BETA=beta is not None, ACT=act, BLOCK=BLOCK)
    return out
