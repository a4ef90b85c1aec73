"""Generator layers that run on packed weights through a backend (see ``backend.py`` for the math).

Each module is built from a :class:`qgen_infer.format.PackedLayer`: it keeps the canonical packed
codes with their scale and zero (a few bits per weight, for inspection via :meth:`matrix_weight`),
the backend's prepared weight (made once, here), and the epilogue ``act(alpha * acc + beta)``.
The matrix view ``W [N, K]`` per layer kind:

* Linear ``[out, in]``: ``N = out, K = in``; ``y = gemm(x)`` with the epilogue fused.
* Conv2d ``[C_out, C_in, kh, kw]``: ``N = C_out, K = C_in*kh*kw``; ``y = gemm(im2col(x))`` with
  the epilogue fused, reshaped to NCHW. Or, for a stride-1 layer with fewer output than input
  channels (DCGAN's 64 -> 3 output layer), per pixel: the convolution is the transposed one of
  the flipped kernel with padding ``d*(k-1) - p``, so the view is the ConvTranspose2d one below
  of ``W.flip(kh, kw)`` and ``y = epilogue(col2im(gemm(x per pixel)))``: the product reads
  ``C_in`` values per pixel instead of im2col's ``C_in*kh*kw`` (9x less at 3x3) and writes
  ``C_out*kh*kw``.
* ConvTranspose2d ``[C_in, C_out, kh, kw]`` permuted to ``[kh, kw, C_out, C_in]``:
  ``N = kh*kw*C_out, K = C_in`` (scale and zero tiled ``kh*kw`` times); ``cols = gemm(x per
  pixel)``, ``y = epilogue(col2im(cols))`` with a channels-last col2im
  (:func:`~qgen_infer.engine.packed_ops.col2im_channels_last`: tap by tap on the CPU, so
  outputs are channels-last in memory and the next layer's per-pixel rows are a view; through
  ``F.fold`` on a GPU, where kh*kw launches cost more than a transpose).

im2col is ``F.unfold`` (autograd: ``F.fold``), col2im the channels-last Function; gradients w.r.t.
the input flow through :class:`PackedGemm`'s ``backend.gemm_t``.
Modules are placed on their device at load time (the prepared weight is opaque to ``.to()``).
A backend with its own convolutions (``prepare_conv`` / ``conv``) runs conv layers with them
instead: the cpu backend's implicit GEMM and fused per-pixel kernels (``cpu_conv``), the triton
backend's implicit GEMM when enabled (``triton_conv``); the paths above are their fallback.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qgen_infer.conv_geometry import conv2d_output_size, conv_transpose2d_output_size
from qgen_infer.engine.backend import Backend, Epilogue, MatrixWeight
from qgen_infer.engine.packed_ops import apply_epilogue, col2im_channels_last, packed_gemm
from qgen_infer.format import PackedLayer, unpack_codes


def _row_vector(v: torch.Tensor, rows: int) -> torch.Tensor:
    """A per-tensor ``[1]`` or per-channel ``[C]`` vector as one value per matrix row (rows are
    channel-minor: ``rows / C`` blocks of C)."""
    if v.numel() == 1:
        return v.reshape(1).expand(rows).contiguous()
    return v.repeat(rows // v.numel()).contiguous()


def matrix_view(kind: str, weight_shape: tuple[int, ...], codes: torch.Tensor,
                scale: torch.Tensor, zero: torch.Tensor, bits: int) -> MatrixWeight:
    """The ``[N, K]`` matrix view of a layer's unpacked codes (see the module docstring)."""
    if kind == "conv_transpose2d":  # [C_in, C_out, kh, kw] -> [kh, kw, C_out, C_in]
        c_in = weight_shape[0]
        matrix = codes.permute(2, 3, 1, 0).reshape(-1, c_in).contiguous()
    elif kind == "conv2d_per_pixel":  # [C_out, C_in, kh, kw] flipped -> [kh, kw, C_out, C_in]
        c_in = weight_shape[1]
        matrix = codes.flip(2, 3).permute(2, 3, 0, 1).reshape(-1, c_in).contiguous()
    else:
        matrix = codes.reshape(weight_shape[0], -1)
    rows = matrix.shape[0]
    return MatrixWeight(matrix, _row_vector(scale, rows), _row_vector(zero, rows), bits)


class PackedModule(nn.Module):
    """Shared state of the packed layers: canonical codes, prepared weight, epilogue."""

    kind = ""

    def __init__(self, layer: PackedLayer, bits: int, backend: Backend,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.view_kind = self.matrix_kind(layer)
        self.name = layer.name
        self.bits = bits
        self.weight_shape = tuple(layer.weight_shape)
        self.backend = backend
        device = device or torch.device("cpu")
        # canonical bytes kept at bits/8 bytes per weight; the unpacked matrix is transient
        self.packed_codes = layer.codes.to(device)
        self.scale = layer.scale.to(device)
        self.zero = layer.zero.to(device)
        weight = self.matrix_weight()
        self.matrix_shape = weight.shape
        self.prepared: Any = backend.prepare(weight)
        self.epilogue = Epilogue(layer.alpha.to(device), layer.beta.to(device), layer.activation,
                                 layer.negative_slope)

    def matrix_kind(self, layer: PackedLayer) -> str:
        """Which matrix view of ``matrix_view`` the layer runs on (decided once, at load)."""
        return self.kind

    def matrix_weight(self) -> MatrixWeight:
        """Decode the canonical codes into the backend contract's ``[N, K]`` matrix view."""
        codes = unpack_codes(self.packed_codes, self.weight_shape, self.bits)
        return matrix_view(self.view_kind, self.weight_shape, codes, self.scale, self.zero,
                           self.bits)

    def extra_repr(self) -> str:
        return (f"{self.kind}, weight={list(self.weight_shape)}, bits={self.bits}, "
                f"act={self.epilogue.activation}, backend={self.backend.name}")


class PackedLinear(PackedModule):
    kind = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = packed_gemm(x.reshape(-1, x.shape[-1]), self.backend, self.prepared, self.epilogue)
        return y.reshape(*lead, y.shape[-1])


class _ConvParams:
    def _conv_init(self, layer: PackedLayer) -> None:
        self.kernel_size = tuple(layer.weight_shape[2:])
        self.stride = tuple(layer.stride)
        self.padding = tuple(layer.padding)
        self.dilation = tuple(layer.dilation)

    def _implicit_conv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The backend's own convolution of ``x`` (epilogue fused), or None when it has none:
        the triton backend's implicit GEMM (``triton_conv``), the cpu backend's implicit GEMM
        or fused per-pixel kernels (``cpu_conv``), planned on first use."""
        if not hasattr(self, "_conv_plan"):
            prepare = getattr(self.backend, "prepare_conv", None)
            self._conv_plan = prepare(self) if prepare is not None else None
        if self._conv_plan is None:
            return None
        return self.backend.conv(x, self._conv_plan, self.epilogue)

    def _conv_output_size(self, size: int, axis: int) -> int:
        return conv2d_output_size(size, self.kernel_size[axis], self.stride[axis],
                                  self.padding[axis], self.dilation[axis])

    def _fold_pixels(self, x: torch.Tensor, output_size: tuple[int, int],
                     padding: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        """``epilogue(col2im(gemm(x per pixel)))`` on a ``[kh*kw*C_out, C_in]`` view: ``x``
        NCHW -> ``[B, C_out, *output_size]``, channels-last in memory (so the next layer's
        per-pixel rows are a view, not a copy)."""
        b, c_in, h, w = x.shape
        # a copy unless x is channels-last; contiguous() also where reshape gives a strided
        # view (batch 1, NCHW): the products take contiguous rows
        pixels = x.permute(0, 2, 3, 1).reshape(b * h * w, c_in).contiguous()
        cols = packed_gemm(pixels, self.backend, self.prepared, None)  # [B*H*W, kh*kw*C_out]
        cols = cols.reshape(b, h, w, *self.kernel_size, -1)
        acc = col2im_channels_last(cols, output_size, padding, stride, self.dilation)
        return apply_epilogue(acc, self.epilogue, channel_dim=-1).permute(0, 3, 1, 2)


class PackedConv2d(PackedModule, _ConvParams):
    kind = "conv2d"

    def __init__(self, layer: PackedLayer, bits: int, backend: Backend,
                 device: torch.device | None = None) -> None:
        super().__init__(layer, bits, backend, device)
        self._conv_init(layer)

    def matrix_kind(self, layer: PackedLayer) -> str:
        """``conv2d_per_pixel`` when that reads less than im2col (stride 1, fewer output than
        input channels) and the equivalent transposed convolution exists (``p <= d*(k-1)``)."""
        c_out, c_in, *kernel = layer.weight_shape
        fits = all(p <= d * (k - 1) for k, p, d in zip(kernel, layer.padding, layer.dilation,
                                                         strict=True))
        if tuple(layer.stride) == (1, 1) and c_out < c_in and fits:
            return "conv2d_per_pixel"
        return "conv2d"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := self._implicit_conv(x)) is not None:
            return y
        b, _, h, w = x.shape
        h_out, w_out = self._conv_output_size(h, 0), self._conv_output_size(w, 1)
        if self.view_kind == "conv2d_per_pixel":
            flipped = tuple(d * (k - 1) - p for k, p, d in zip(
                self.kernel_size, self.padding, self.dilation, strict=True))
            return self._fold_pixels(x, (h_out, w_out), flipped, (1, 1))
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [B,K,L]
        rows = cols.transpose(1, 2).reshape(b * h_out * w_out, cols.shape[1]).contiguous()
        y = packed_gemm(rows, self.backend, self.prepared, self.epilogue)  # [B*L, N]
        return y.reshape(b, h_out * w_out, -1).transpose(1, 2).reshape(b, -1, h_out, w_out)


class PackedConvTranspose2d(PackedModule, _ConvParams):
    kind = "conv_transpose2d"

    def __init__(self, layer: PackedLayer, bits: int, backend: Backend,
                 device: torch.device | None = None) -> None:
        super().__init__(layer, bits, backend, device)
        self._conv_init(layer)
        self.output_padding = tuple(layer.output_padding)
        self.out_channels = int(layer.weight_shape[1])

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """PyTorch's output size per axis (:mod:`qgen_infer.conv_geometry`)."""
        return tuple(  # type: ignore[return-value]
            conv_transpose2d_output_size(size, self.kernel_size[a], self.stride[a],
                                         self.padding[a], self.dilation[a],
                                         self.output_padding[a])
            for a, size in enumerate((h, w))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := self._implicit_conv(x)) is not None:
            return y
        _, _, h, w = x.shape
        return self._fold_pixels(x, self.output_size(h, w), self.padding, self.stride)


PACKED_MODULES: dict[str, type[PackedModule]] = {
    "linear": PackedLinear,
    "conv2d": PackedConv2d,
    "conv_transpose2d": PackedConvTranspose2d,
}
