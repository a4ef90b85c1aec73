"""Triton helpers shared by every kernel: the code decoders and the one epilogue.

``load_codes`` and ``load_code_tile`` are the only places that know the ``kpack`` bit layout (see
``layout``). ``load_codes`` takes broadcastable index tensors ``k_idx`` and ``n_idx`` and gives
every code its own load of the word holding it; ``load_code_tile`` loads a tile's words once and
splits them with shifts (``KernelConfig.word_decode`` picks one). Either way the int32 codes
``c[n, k]`` are decoded in registers and the dequantized weight never exists in global memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The ``ACT`` constexpr of every kernel is ``activation_id(name)``; the epilogue below tests the
# codes 1-3 as literals (Triton compares constexprs), qgen_infer/activations.py numbers them.
from qgen_infer.activations import ACTIVATION_IDS as ACTIVATION_IDS
from qgen_infer.activations import activate as activate
from qgen_infer.activations import activation_id as activation_id


@triton.jit
def _field(words, k_idx, BITS: tl.constexpr):
    # Code j of a word sits at bits [j*BITS, (j+1)*BITS). The shift is arithmetic on int32, but the
    # mask drops the sign-extended bits, so the top code of a word (bit 31 set) decodes correctly.
    return (words >> ((k_idx % (32 // BITS)) * BITS)) & ((1 << BITS) - 1)


@triton.jit
def load_codes(w_ptr, k_idx, n_idx, mask, ldw, K, BITS: tl.constexpr):
    """int32 codes ``c[n_idx, k_idx]`` (0 where ``mask`` is false) from ``kpack`` words.

    ``w_ptr``: int32 ``[kpack_rows(K, BITS), N]`` with row stride ``ldw`` (``layout``: a multiple
    of 16, so the loads along N vectorise); ``k_idx``, ``n_idx``, ``mask``: broadcastable
    int/bool tensors, e.g. ``[BK, 1]``, ``[1, BN]``. Every lane loads the word holding its code,
    CPW loads of one word; compiled for sm_90 the pipeline stages each of them through shared
    memory (``bench/kernel_resources.py``), which ``load_code_tile`` avoids.
    """
    if BITS == 3:
        # 2-bit plane of the low bits first, then the 1-bit plane of the high bit.
        lo = tl.load(w_ptr + (k_idx // 16) * ldw + n_idx, mask=mask, other=0)
        hi_ptr = w_ptr + ((K + 15) // 16) * ldw
        hi = tl.load(hi_ptr + (k_idx // 32) * ldw + n_idx, mask=mask, other=0)
        return _field(lo, k_idx, 2) | (_field(hi, k_idx, 1) << 2)
    else:
        words = tl.load(w_ptr + (k_idx // (32 // BITS)) * ldw + n_idx, mask=mask, other=0)
        return _field(words, k_idx, BITS)


@triton.jit
def _split_plane(w_ptr, row0, rows, offs_n, n_mask, ldw, BITS: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # BLOCK_K // CPW words per column, each loaded once, split into its CPW codes by a
    # broadcast shift: [WR, 1, BN] >> [1, CPW, 1] -> [WR, CPW, BN], row-major = k order.
    CPW: tl.constexpr = 32 // BITS
    WR: tl.constexpr = BLOCK_K // CPW
    offs_w = row0 + tl.arange(0, WR)
    words = tl.load(w_ptr + offs_w[:, None] * ldw + offs_n[None, :],
                    mask=(offs_w < rows)[:, None] & n_mask[None, :], other=0)
    shifts = tl.arange(0, CPW) * BITS
    codes = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
    return tl.reshape(codes, (BLOCK_K, BLOCK_N))


@triton.jit
def load_code_tile(w_ptr, k0, offs_n, n_mask, ldw, K, BITS: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """int32 codes ``c[offs_n, k0 : k0 + BLOCK_K]`` as a ``[BLOCK_K, BLOCK_N]`` tile, loading each
    word once (``load_codes`` gives every code its own load of the word that holds it).

    Needs ``k0 % BLOCK_K == 0`` and ``BLOCK_K >= 32`` (a whole number of words per column in
    every plane); codes past K are the zero padding of ``layout``, so the caller masks nothing
    here but its activations. Same layout and result as ``load_codes``.
    """
    if BITS == 3:
        lo_rows = (K + 15) // 16
        lo = _split_plane(w_ptr, k0 // 16, lo_rows, offs_n, n_mask, ldw, 2, BLOCK_K, BLOCK_N)
        hi = _split_plane(w_ptr + lo_rows * ldw, k0 // 32, (K + 31) // 32, offs_n, n_mask, ldw,
                          1, BLOCK_K, BLOCK_N)
        return lo | (hi << 2)
    else:
        return _split_plane(w_ptr, k0 // (32 // BITS), (K + 32 // BITS - 1) // (32 // BITS),
                            offs_n, n_mask, ldw, BITS, BLOCK_K, BLOCK_N)


@triton.jit
def code_tile(w_ptr, k0, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, WORD_DECODE: tl.constexpr,
              TRANSPOSED: tl.constexpr):
    """The kernels' tile of codes for K positions ``offs_k`` (= ``k0 + arange(BLOCK_K)``) and N
    positions ``offs_n``: ``[BLOCK_K, BLOCK_N]``, or ``[BLOCK_N, BLOCK_K]`` when TRANSPOSED
    (``gemm_t``), by the decode WORD_DECODE picks."""
    if WORD_DECODE:
        c = load_code_tile(w_ptr, k0, offs_n, n_mask, ldw, K, BITS, BLOCK_K, BLOCK_N)
        if TRANSPOSED:
            c = tl.trans(c)
    elif TRANSPOSED:
        c = load_codes(w_ptr, offs_k[None, :], offs_n[:, None],
                       n_mask[:, None] & k_mask[None, :], ldw, K, BITS)
    else:
        c = load_codes(w_ptr, offs_k[:, None], offs_n[None, :],
                       k_mask[:, None] & n_mask[None, :], ldw, K, BITS)
    return c


@triton.jit
def _tanh(y):
    # tanh(y) = sign(y) (1 - e) / (1 + e), e = exp(-2|y|) <= 1: no overflow; absolute error a few
    # ulp of 1. libdevice.tanh would be more accurate near 0 but the interpreter lacks it, and one
    # tested code path beats two.
    e = tl.exp(-2.0 * tl.abs(y))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(y < 0, -t, t)


@triton.jit
def apply_epilogue(y, n_idx, n_mask, alpha_ptr, beta_ptr, negative_slope,
                   HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr, ACT: tl.constexpr):
    """``act(alpha[n] * y + beta[n])`` on fp32 ``y``; ``n_idx``/``n_mask`` broadcast against ``y``.

    ``alpha``, ``beta``: float32 ``[N]`` (ignored unless HAS_ALPHA / HAS_BETA).
    ACT: 0 none, 1 relu, 2 leaky_relu(negative_slope), 3 tanh.
    """
    if HAS_ALPHA:
        y = y * tl.load(alpha_ptr + n_idx, mask=n_mask, other=0.0)
    if HAS_BETA:
        y = y + tl.load(beta_ptr + n_idx, mask=n_mask, other=0.0)
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    elif ACT == 2:
        y = tl.where(y > 0, y, y * negative_slope)
    elif ACT == 3:
        y = _tanh(y)
    return y


@triton.jit
def gradient_prologue(g, y_ptr, alpha_ptr, offs_m, offs_n, mask, n_mask, stride_ym, stride_yn,
                      negative_slope, HAS_ALPHA: tl.constexpr, ACT: tl.constexpr):
    """``g * act'(y) * alpha[n]`` on the fp32 tile ``g[BM, BN]`` of an incoming gradient: the
    backward of :func:`apply_epilogue` without its ``beta``, ``act'`` written in terms of the
    output ``y`` (the four activations are monotone). ``y``: ``[M, N]`` with strides
    ``stride_ym``, ``stride_yn`` (read only when ACT != 0); ``alpha``: float32 ``[N]``.
    """
    if ACT != 0:
        y = tl.load(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
                    mask=mask, other=0.0).to(tl.float32)
        if ACT == 1:
            g = tl.where(y > 0, g, 0.0)
        elif ACT == 2:
            g = tl.where(y > 0, g, g * negative_slope)
        else:
            g = g * (1.0 - y * y)
    if HAS_ALPHA:
        g = g * tl.load(alpha_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    return g


@triton.jit
def store_tile(y, out_ptr, offs_m, offs_c, m_mask, c_mask, M, C, pid_s, alpha_ptr, beta_ptr,
               negative_slope, HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr, ACT: tl.constexpr,
               PARTIAL: tl.constexpr):
    """Store the fp32 tile ``y[BM, BC]`` at rows ``offs_m`` and columns ``offs_c``.

    PARTIAL false: ``out`` is ``[M, C]`` in the activation dtype and the epilogue is applied here.
    PARTIAL true (split reduction): ``out`` is the fp32 partials buffer ``[S, M, C]``; slice
    ``pid_s`` gets ``y`` as is and ``splitk`` applies the epilogue after the sum. (A flag, not
    the split count, so that every split count shares one compiled kernel.)
    """
    mask = m_mask[:, None] & c_mask[None, :]
    offs = offs_m[:, None] * C + offs_c[None, :]
    if PARTIAL:
        tl.store(out_ptr + pid_s * M * C + offs, y, mask=mask)
    else:
        y = apply_epilogue(y, offs_c[None, :], c_mask[None, :], alpha_ptr, beta_ptr,
                           negative_slope, HAS_ALPHA, HAS_BETA, ACT)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grouped_tile(pid, rows, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                 GROUP: tl.constexpr):
    """Map a linear program id to a (row tile, column tile) pair, GROUP row tiles at a time, so
    programs running together share weight tiles and activation tiles in L2."""
    n_r = tl.cdiv(rows, BLOCK_R)
    n_c = tl.cdiv(cols, BLOCK_C)
    per_group = GROUP * n_c
    first_r = (pid // per_group) * GROUP
    size_r = tl.minimum(n_r - first_r, GROUP)
    return first_r + (pid % per_group) % size_r, (pid % per_group) // size_r


# --- host-side helpers shared by the launchers -----------------------------------------------

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
INT32_MAX = 2**31 - 1


def dot_types(dtype) -> tuple[tl.dtype, str]:
    """``(operand dtype, input precision)`` for ``tl.dot`` on activations of torch ``dtype``.

    Operands stay in the activation dtype (codes are exact in fp16/bf16), except bf16 under the
    interpreter: its ``tl.dot`` multiplies the raw uint16 storage of bf16 (triton 3.9), so there
    the operands go through fp32, which is exact for bf16 values and small codes. fp32 follows
    torch's matmul setting (TF32 only when the user allowed it, as cuBLAS does); 16-bit operands
    ignore the precision.
    """
    import torch

    from qgen_infer.kernels.configs import interpreting

    if dtype == torch.float32:
        return tl.float32, ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")
    if dtype == torch.bfloat16:
        return (tl.float32, "ieee") if interpreting() else (tl.bfloat16, "tf32")
    return tl.float16, "tf32"


def check_words(words) -> None:
    """The packed words must have unit column stride (rows may be padded: ``layout``)."""
    if words.ndim != 2 or words.stride(1) != 1:
        raise ValueError(f"packed words must be 2-D with unit column stride, got shape "
                         f"{tuple(words.shape)} and strides {words.stride()}")


def check_operand(t, name: str, width: int, width_name: str, device) -> None:
    """Validate a 2-D activation operand; raises ValueError with a message that says the fix."""
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [M, {width_name}], got shape {tuple(t.shape)}")
    if str(t.dtype).removeprefix("torch.") not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.shape[1] != width:
        raise ValueError(f"{name} has {t.shape[1]} columns but the weight's {width_name} "
                         f"is {width}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the packed weight is on {device}")


def reduction_slices(length: int, split: int, block: int) -> tuple[int, int]:
    """``(per_slice, slices)``: slice length rounded up to ``block`` so that every slice starts on
    a block boundary, and the number of non-empty slices that covers ``length``."""
    per_split = -(-length // split)
    per = max(block, -(-per_split // block) * block)
    return per, max(1, -(-length // per))
