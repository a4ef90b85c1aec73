"""LinearQuantize (Hubara et al., JMLR 2018) with an exact integer representation.

Every quantized weight is ``w_q = scale * (code - zero)`` with unsigned integer codes in
``[0, 2**bits)``, a positive ``scale`` and a ``zero`` offset, per tensor or per output channel.
Three grids, written out in ``docs/QUANTIZATION.md``:

* ``bits >= 2``: the mid-tread linear quantizer ``Clip(round(w / Δ), -2**(k-1), 2**(k-1) - 1) · Δ``
  with ``Δ = R · 2**(1-k)`` and ``R = max|w|`` (Hubara's ``Δ = 2**(1-k)`` on weights normalised to
  ``[-1, 1]``). Codes are ``round(w/Δ) + 2**(k-1)``, so ``scale = Δ`` and ``zero = 2**(k-1)``.
  With Hubara's ``overflow_rate`` r > 0, ``R`` is instead the ``(1 - r)`` quantile of ``|w|``: the
  largest fraction r of the weights clip to the extreme levels (and get no gradient), and the
  step shrinks for the others.
  The mid-tread grid is asymmetric: at 2 bits its levels are ``-R, -R/2, 0, +R/2``, one positive
  level, so every large positive weight loses up to half its size while a negative one keeps it.
* ``grid="mid-rise"`` (bits >= 2; not the paper's): ``[-R, R]`` cut into ``2**k`` equal cells, each
  weight mapped to its cell's centre, ``(Clip(floor(w / Δ), -2**(k-1), 2**(k-1) - 1) + 1/2) · Δ``
  with the same ``Δ``: levels symmetric about zero (at 2 bits ``±R/4, ±3R/4``), none at zero.
  Codes are ``floor(w/Δ) + 2**(k-1)`` and ``zero = 2**(k-1) - 1/2``, so the file format and
  every kernel, which take ``scale * (code - zero)`` with a float ``zero``, need nothing new.
* ``bits == 1``: ``sign(w) · α`` with ``α = mean|w|`` (XNOR-Net's optimal binary scale). Codes are
  ``w >= 0``, so ``scale = 2α`` and ``zero = 1/2``; ``2α · (c - 1/2)`` is ``±α`` exactly because the
  product by 1/2 is exact in binary floating point.

``dequantize`` is the single place where codes become floats. The straight-through estimator
(:func:`fake_quantize`) runs the *same* ``quantize_codes`` and ``dequantize`` calls, so weights
decoded from an exported file equal the fake-quantized training weights bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 32)
GRANULARITIES = ("tensor", "channel")
GRIDS = ("mid-tread", "mid-rise")
DEFAULT_GRID = "mid-tread"  # the paper's


@dataclass(frozen=True)
class QuantSpec:
    """How one weight tensor is quantized.

    ``bits`` is 1..4, or 32 for full precision (no quantization). ``granularity`` is ``"tensor"``
    (one scale, as in the paper) or ``"channel"`` (one scale per output channel); ``channel_axis``
    names the output-channel axis of the weight (0 for Linear and Conv2d, 1 for ConvTranspose2d).
    ``overflow_rate`` (Hubara et al.'s parameter, bits 2..4 only): the fraction of weights allowed
    to clip; 0 (the default) takes the range from the largest weight. ``grid`` (bits 2..4 only):
    ``"mid-tread"`` (the paper's, with a level at zero) or ``"mid-rise"`` (symmetric levels).
    """

    bits: int = 32
    granularity: str = "tensor"
    channel_axis: int = 0
    overflow_rate: float = 0.0
    grid: str = DEFAULT_GRID

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if not 0.0 <= self.overflow_rate < 1.0:
            raise ValueError(f"overflow_rate must be in [0, 1), got {self.overflow_rate}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")

    @property
    def enabled(self) -> bool:
        return self.bits < 32


@dataclass
class QuantizedTensor:
    """The exact integer form of a quantized weight: ``w_q = scale * (codes - zero)``.

    ``codes``: uint8, the weight's shape, values in ``[0, 2**bits)``.
    ``scale``, ``zero``: float32, shape ``[C]`` with ``C`` the number of output channels
    (``C = 1`` for per-tensor), broadcast along ``spec.channel_axis``.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    spec: QuantSpec

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.spec.channel_axis)


def _channel_view(v: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """Reshape a per-channel vector ``[C]`` to broadcast along ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = v.numel()
    return v.reshape(shape)


def _reduce_abs(w: torch.Tensor, spec: QuantSpec, how: str) -> torch.Tensor:
    """Per tensor ``[1]`` or per channel ``[C]``: ``mean|w|``, ``max|w|``, or with ``how="range"``
    the range ``R``: ``max|w|``, or the ``ceil((1 - r) n)``-th smallest ``|w|`` of the ``n`` in
    the tensor or channel for an overflow rate ``r`` (an element, so exact and deterministic)."""
    a = w.detach().abs().float()
    rows = a.reshape(1, -1) if spec.granularity == "tensor" else (
        a.movedim(spec.channel_axis, 0).reshape(a.shape[spec.channel_axis], -1))
    if how == "mean":
        # summed in float64: a float32 sum's rounding follows the thread count's split of the
        # reduction, and the 1-bit scale (so a checkpoint's export, byte for byte) with it
        return rows.mean(dim=1, dtype=torch.float64).float()
    if how == "range" and spec.overflow_rate > 0:
        n = rows.shape[1]
        k = min(n, max(1, math.ceil((1.0 - spec.overflow_rate) * n)))
        return rows.kthvalue(k, dim=1).values
    return rows.amax(dim=1)


# Keeps a tensor of zeros quantizable: its scale becomes tiny instead of 0 (no division by 0).
_TINY = torch.finfo(torch.float32).tiny


def quantize_codes(w: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantize ``w`` to unsigned codes with scales and zeros (see the module docstring)."""
    if not spec.enabled:
        raise ValueError("quantize_codes needs bits in 1..4; 32 bits is full precision")
    if spec.granularity == "channel" and not -w.ndim <= spec.channel_axis < w.ndim:
        raise ValueError(
            f"channel_axis {spec.channel_axis} out of range for shape {tuple(w.shape)}")
    axis = spec.channel_axis % w.ndim
    spec = replace(spec, channel_axis=axis)
    w32 = w.detach().float()
    k = spec.bits
    if k == 1:
        alpha = _reduce_abs(w32, spec, "mean").clamp_min(_TINY)
        scale = 2.0 * alpha
        zero = torch.full_like(scale, 0.5)
        codes = (w32 >= 0).to(torch.uint8)
    else:
        half = 2 ** (k - 1)
        delta = (_reduce_abs(w32, spec, "range") / half).clamp_min(_TINY)
        d = delta if spec.granularity == "tensor" else _channel_view(delta, w.ndim, axis)
        mid_rise = spec.grid == "mid-rise"
        cell = torch.floor(w32 / d) if mid_rise else torch.round(w32 / d)
        codes = (torch.clamp(cell, -half, half - 1) + half).to(torch.uint8)
        scale = delta
        zero = torch.full_like(scale, half - 0.5 if mid_rise else float(half))
    return QuantizedTensor(codes, scale.contiguous(), zero.contiguous(), spec)


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, channel_axis: int = 0
) -> torch.Tensor:
    """``scale * (codes - zero)`` in float32, broadcasting per-channel vectors along the axis.

    This is the one definition of the code->value map: training (STE), export and every engine
    backend's reference path call it, which is what makes export bit-exact.
    """
    c = codes.to(torch.float32)
    if scale.numel() == 1:
        return scale.reshape(()) * (c - zero.reshape(()))
    axis = channel_axis % codes.ndim
    return _channel_view(scale, codes.ndim, axis) * (c - _channel_view(zero, codes.ndim, axis))


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized weight. Backward: identity inside the clipping range ``|w| <= R``,
    zero outside (Hubara et al.'s STE).

    With the default range ``R = max|w|`` every weight is inside, so the backward is the identity
    (the one clipped level, the top code of a mid-tread quantizer, still passes its gradient);
    with an overflow rate the clipped weights get no gradient.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:  # type: ignore[override]
        q = quantize_codes(w, spec)
        ctx.inside = None
        if spec.overflow_rate > 0 and spec.bits >= 2:
            half = 2 ** (spec.bits - 1)
            r = q.scale * half if spec.granularity == "tensor" else _channel_view(
                q.scale * half, w.ndim, q.spec.channel_axis)
            ctx.inside = w.detach().abs() <= r
        return q.dequantize().to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return (grad if ctx.inside is None else grad * ctx.inside), None


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize ``w`` with a straight-through gradient; identity for 32 bits."""
    if not spec.enabled:
        return w
    return _StraightThrough.apply(w, spec)
