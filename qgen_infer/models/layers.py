"""Generator layers whose weights pass through LinearQuantize on every forward pass.

The modules hold full-precision master weights (``weight``) and a :class:`QuantSpec`; the forward
pass uses ``fake_quantize(weight)``, so gradients reach the master weights by straight-through
estimation. Biases stay in full precision (they are few and the paper quantizes weights only).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from qgen_infer.quant import QuantSpec, fake_quantize


class QuantizedLayer:
    """Mixin: ``quantized_weight()`` is the weight the forward pass sees."""

    quant: QuantSpec
    weight: torch.Tensor

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize(self.weight, self.quant)


class QLinear(nn.Linear, QuantizedLayer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 quant: QuantSpec | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.quant = replace(quant, channel_axis=0) if quant else QuantSpec()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class QConv2d(nn.Conv2d, QuantizedLayer):
    def __init__(self, *args, quant: QuantSpec | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quant = replace(quant, channel_axis=0) if quant else QuantSpec()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QConvTranspose2d(nn.ConvTranspose2d, QuantizedLayer):
    """ConvTranspose2d; its weight is ``[C_in, C_out, kH, kW]``, so output channels are axis 1."""

    def __init__(self, *args, quant: QuantSpec | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quant = replace(quant, channel_axis=1) if quant else QuantSpec(channel_axis=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            x, self.quantized_weight(), self.bias, self.stride, self.padding,
            self.output_padding, self.groups, self.dilation,
        )


class Reshape(nn.Module):
    """View a batch of flat vectors as ``[B, *shape]``."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def quantized_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The named submodules whose weights are quantized, in forward order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, QuantizedLayer)]
