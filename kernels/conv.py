"""Packed 2-D convolution and transposed convolution as implicit GEMM (no im2col, no col2im).

Math (NCHW; ``V[n, c, ky, kx] = s (code - z)`` with the scale on the output channel ``n`` or on
the input channel ``c``)::

    out[b, n, oy, ox] = act(alpha[n] Σ_{c, ky, kx} x[b, c, iy, ix] V[n, c, ky, kx] + beta[n])
    conv2d:            iy = oy·s - p + ky·d                      (taps outside x are 0)
    conv_transpose2d:  iy = (oy + p - ky·d) / s, when s divides it   (likewise for x)

The transposed convolution runs as ``s_h·s_w`` convolutions, one per output phase
``(oy mod s, ox mod s)``: in phase ``py`` only the taps ``ky = ky0 + j·(s/g)`` (``g = gcd(s, d)``)
divide, and there ``iy = qy + base - j·(d/g)`` for the phase's output row ``qy`` — a plain
convolution with stride 1, padding ``-base`` and dilation ``-d/g`` on the sub-kernel of those
taps, written to every ``s``-th output pixel. No tap is multiplied only to be masked (a gather
over all taps would waste 3 in 4 at stride 2). A phase without taps is ``act(beta)``.

As a GEMM: rows M = B·OH·OW output pixels, columns N output channels, reduction
K = C·kh·kw with ``k = (c·kh + ky)·kw + kx``. Each ``[BLOCK_M, BLOCK_K]`` tile of x is gathered
from the input by that index map (masked taps load 0), the ``[BLOCK_K, BLOCK_N]`` tile of codes
is decoded from ``kpack`` words in registers (``common.code_tile``), and the scale/zero
correction and the epilogue run after the K loop, as in ``gemm``:

    scale on n:  y = s[n] (Σ_k x c - z[n] Σ_k x)
    scale on c:  y = Σ_k (x s[c]) c - Σ_k x s[c] z[c]

The two directions serve each other's input gradient: the input gradient of
``conv_transpose2d`` with weight ``W[ci, co, ky, kx]`` is ``conv2d`` of the output gradient with
``V = W`` (``n = ci``, ``c = co``; a per-``co`` scale is then on ``c``), and that of ``conv2d`` is
``conv_transpose2d`` with ``V = W.permute(1, 0, 2, 3)``.

Tensors: ``x`` ``[B, C, H, W]`` float32/float16/bfloat16, any strides; weight words int32
``[kpack_rows(K, bits), N]`` (``layout``); ``scale``/``zero`` float32 ``[N]`` or ``[C]``;
``alpha``/``beta`` float32 ``[N]``; ``out`` ``[B, N, OH, OW]`` contiguous in x's dtype.
Launch: one program per ``[BLOCK_M, BLOCK_N]`` output tile; fixed tiles (no tuning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from qgen_infer.conv_geometry import conv2d_output_size, conv_transpose2d_output_size
from qgen_infer.kernels.common import (
    INT32_MAX,
    activate,
    activation_id,
    apply_epilogue,
    code_tile,
    dot_types,
)
from qgen_infer.kernels.configs import interpreting
from qgen_infer.kernels.layout import PackedKWords, unpack_kwords


@dataclass(frozen=True)
class PackedConvWeight:
    """``V[n, c, ky, kx] = scale (code - zero)`` as ``kpack`` words of the ``[N, C·kh·kw]``
    matrix; ``scale``/``zero`` float32 ``[N]`` (``scale_on_k`` false) or ``[C]`` (true)."""

    words: PackedKWords
    scale: torch.Tensor
    zero: torch.Tensor
    scale_on_k: bool
    channels: int
    kernel_size: tuple[int, int]
    _phases: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def out_channels(self) -> int:
        return self.words.n

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   scale_on_k: bool = False, device: torch.device | str | None = None
                   ) -> PackedConvWeight:
        """From canonical uint8 codes ``[N, C, kh, kw]``; ``scale``/``zero``: ``[1]`` (one per
        tensor), ``[N]`` or, with ``scale_on_k``, ``[C]``."""
        if codes.ndim != 4:
            raise ValueError(f"codes must be [N, C, kh, kw], got shape {tuple(codes.shape)}")
        n, c, kh, kw = codes.shape
        length = c if scale_on_k else n
        scale, zero = (v.reshape(-1).float() for v in (scale, zero))
        if scale.numel() == 1:
            scale, zero = scale.expand(length), zero.expand(length)
        if scale.shape != (length,) or zero.shape != (length,):
            raise ValueError(f"scale and zero must have 1 or {length} values")
        ones = torch.ones(n)  # the words' own scale/zero are not read (ours are above)
        words = PackedKWords.from_codes(codes.reshape(n, -1), ones, ones * 0, bits, device)
        dev = words.words.device
        return cls(words, scale.to(dev).contiguous(), zero.to(dev).contiguous(), scale_on_k,
                   c, (kh, kw))

    def phases(self, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int]) -> list[tuple]:
        """The transposed convolution's output phases (module docstring), made once per
        geometry: ``(py, px, base_y, base_x, dil_y, dil_x, sub-weight or None)``."""
        key = (stride, padding, dilation)
        if key not in self._phases:
            n, (kh, kw), bits = self.out_channels, self.kernel_size, self.words.bits
            codes = unpack_kwords(self.words.words.cpu(), self.words.k, bits)
            codes = codes.reshape(n, self.channels, kh, kw)
            per_axis = [_axis_phases(*g) for g in zip(stride, padding, dilation, (kh, kw),
                                                      strict=True)]
            out = []
            for py, y0, by, ry, dy in per_axis[0]:
                for px, x0, bx, rx, dx in per_axis[1]:
                    sub = None
                    if y0 is not None and x0 is not None:
                        sub = PackedConvWeight.from_codes(
                            codes[:, :, y0::ry, x0::rx].contiguous(), self.scale.cpu(),
                            self.zero.cpu(), bits, self.scale_on_k, self.words.words.device)
                    out.append((py, px, by, bx, dy, dx, sub))
            self._phases[key] = out
        return self._phases[key]


def _axis_phases(s: int, p: int, d: int, k: int) -> list[tuple]:
    """Per output phase ``q`` of one axis: ``(q, first tap, base, tap step, -dilation)``, or
    ``(q, None, 0, 1, 1)`` when no tap of the kernel lands on that phase."""
    g = math.gcd(s, d)
    out = []
    for q in range(s):
        first = next((t for t in range(k) if (q + p - t * d) % s == 0), None)
        if first is None:
            out.append((q, None, 0, 1, 1))
        else:
            out.append((q, first, (q + p - first * d) // s, s // g, -(d // g)))
    return out


@triton.jit(do_not_specialize=["B"])
def conv_kpack_kernel(x_ptr, w_ptr, scale_ptr, zero_ptr, alpha_ptr, beta_ptr, out_ptr,
                      B, C, H, W, N, OH, OW, ldw, KH, KW, SH, SW, PH, PW, DH, DW,
                      sxb, sxc, sxh, sxw, OPY, OPX, OSY, OSX, OHF, OWF, negative_slope,
                      BITS: tl.constexpr, SCALE_ON_K: tl.constexpr,
                      HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr, ACT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < B * OH * OW
    n_mask = offs_n < N
    b = offs_m // (OH * OW)
    oy = (offs_m // OW) % OH
    ox = offs_m % OW
    K = C * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        c = offs_k // (KH * KW)
        ky = (offs_k // KW) % KH
        kx = offs_k % KW
        iy = oy[:, None] * SH - PH + ky[None, :] * DH
        ix = ox[:, None] * SW - PW + kx[None, :] * DW
        valid = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        mask = m_mask[:, None] & k_mask[None, :] & valid
        x = tl.load(x_ptr + b[:, None] * sxb + c[None, :] * sxc + iy * sxh + ix * sxw,
                    mask=mask, other=0.0).to(tl.float32)
        if SCALE_ON_K:
            s = tl.load(scale_ptr + c, mask=k_mask, other=0.0)
            z = tl.load(zero_ptr + c, mask=k_mask, other=0.0)
            x = x * s[None, :]
            xsum += tl.sum(x * z[None, :], axis=1)
        else:
            xsum += tl.sum(x, axis=1)
        codes = code_tile(w_ptr, k0, offs_k, k_mask, offs_n, n_mask, ldw, K, BITS, BLOCK_K,
                          BLOCK_N, True, False)
        acc = tl.dot(x.to(DOT_DTYPE), codes.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if SCALE_ON_K:
        y = acc - xsum[:, None]
    else:
        scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
        zero = tl.load(zero_ptr + offs_n, mask=n_mask, other=0.0)
        y = scale[None, :] * (acc - zero[None, :] * xsum[:, None])
    y = apply_epilogue(y, offs_n[None, :], n_mask[None, :], alpha_ptr, beta_ptr, negative_slope,
                       HAS_ALPHA, HAS_BETA, ACT)
    # output pixel (OPY + oy*OSY, OPX + ox*OSX) of an [OHF, OWF] image (a phase's pixels)
    pixel = (OPY + oy * OSY) * OWF + OPX + ox * OSX
    out = out_ptr + (b * N * OHF * OWF + pixel)[:, None] + (offs_n * OHF * OWF)[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _tiles() -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, warps)``: small under the interpreter, 64x64x32 compiled
    (BLOCK_K 32: whole words of every width, which the word decode needs)."""
    return (16, 32, 32, 4) if interpreting() else (64, 64, 32, 4)


def _vectors(alpha, beta, n: int, device) -> list[torch.Tensor | None]:
    vec = [None if v is None else v.to(device, torch.float32).contiguous() for v in (alpha, beta)]
    for v, name in zip(vec, ("alpha", "beta"), strict=True):
        if v is not None and v.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
    return vec


def _output(x: torch.Tensor, w: PackedConvWeight, oh: int, ow: int) -> torch.Tensor:
    """The checked output buffer ``[B, N, oh, ow]``."""
    if x.ndim != 4 or x.shape[1] != w.channels:
        raise ValueError(f"x must be [B, {w.channels}, H, W], got shape {tuple(x.shape)}")
    if x.device != w.words.words.device:
        raise ValueError(f"x is on {x.device} but the weight is on {w.words.words.device}")
    if min(oh, ow) < 1:
        raise ValueError(f"the output would be {oh}x{ow}")
    out = torch.empty((x.shape[0], w.out_channels, oh, ow), device=x.device, dtype=x.dtype)
    if max(out.numel(), x.numel()) > INT32_MAX:
        raise ValueError("tensors with more than 2**31 - 1 elements are not supported")
    return out


def _launch(x: torch.Tensor, w: PackedConvWeight, out: torch.Tensor, grid_hw: tuple[int, int],
            phase: tuple[int, int, int, int], stride, padding, dilation, vec: list,
            activation: str, negative_slope: float) -> None:
    """One conv2d-shaped launch writing ``out[:, :, py + oy*sy, px + ox*sx]`` for the
    ``grid_hw`` output positions ``(oy, ox)``; ``phase = (py, px, sy, sx)``."""
    b, c, h, wd = x.shape
    n = w.out_channels
    oh, ow = grid_hw
    if b * oh * ow == 0 or n == 0:
        return
    bm, bn, bk, warps = _tiles()
    dot_dtype, precision = dot_types(x.dtype)
    grid = (triton.cdiv(b * oh * ow, bm), triton.cdiv(n, bn))
    conv_kpack_kernel[grid](
        x, w.words.words, w.scale, w.zero, vec[0] if vec[0] is not None else w.scale,
        vec[1] if vec[1] is not None else w.scale, out, b, c, h, wd, n, oh, ow,
        w.words.words.stride(0), *w.kernel_size, *stride, *padding, *dilation, *x.stride(),
        *phase, *out.shape[2:], float(negative_slope), BITS=w.words.bits,
        SCALE_ON_K=w.scale_on_k, HAS_ALPHA=vec[0] is not None, HAS_BETA=vec[1] is not None,
        ACT=activation_id(activation), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_DTYPE=dot_dtype,
        DOT_PRECISION=precision, num_warps=warps)


def conv2d(x: torch.Tensor, w: PackedConvWeight, stride=1, padding=0, dilation=1,
           alpha: torch.Tensor | None = None, beta: torch.Tensor | None = None,
           activation: str = "none", negative_slope: float = 0.01) -> torch.Tensor:
    """``act(alpha * conv2d(x, V) + beta)`` as ``F.conv2d`` computes it (no groups)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (w.kernel_size, _pair(stride), _pair(padding),
                                              _pair(dilation))
    oh = conv2d_output_size(x.shape[-2], kh, sh, ph, dh)
    ow = conv2d_output_size(x.shape[-1], kw, sw, pw, dw)
    out = _output(x, w, oh, ow)
    _launch(x, w, out, (oh, ow), (0, 0, 1, 1), (sh, sw), (ph, pw), (dh, dw),
            _vectors(alpha, beta, w.out_channels, x.device), activation, negative_slope)
    return out


def conv_transpose2d(x: torch.Tensor, w: PackedConvWeight, stride=1, padding=0, dilation=1,
                     output_padding=0, alpha: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None, activation: str = "none",
                     negative_slope: float = 0.01) -> torch.Tensor:
    """``act(alpha * conv_transpose2d(x, W) + beta)`` as ``F.conv_transpose2d`` computes it,
    with ``w`` holding ``V = W.permute(1, 0, 2, 3)`` (``[C_out, C_in, kh, kw]``): one
    convolution launch per output phase (module docstring)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (w.kernel_size, _pair(stride), _pair(padding),
                                              _pair(dilation))
    oph, opw = _pair(output_padding)
    oh = conv_transpose2d_output_size(x.shape[-2], kh, sh, ph, dh, oph)
    ow = conv_transpose2d_output_size(x.shape[-1], kw, sw, pw, dw, opw)
    out = _output(x, w, oh, ow)
    vec = _vectors(alpha, beta, w.out_channels, x.device)
    for py, px, by, bx, ry, rx, sub in w.phases((sh, sw), (ph, pw), (dh, dw)):
        grid_hw = (-(-(oh - py) // sh), -(-(ow - px) // sw))
        if min(grid_hw) < 1:
            continue
        if sub is None:  # no tap lands here: the epilogue of 0
            empty = torch.zeros(w.out_channels, device=x.device)
            if vec[1] is not None:
                empty = vec[1].clone()
            out[:, :, py::sh, px::sw] = activate(empty, activation, negative_slope).to(
                out.dtype)[None, :, None, None]
            continue
        _launch(x, sub, out, grid_hw, (py, px, sh, sw), (1, 1), (-by, -bx), (ry, rx), vec,
                activation, negative_slope)
    return out
