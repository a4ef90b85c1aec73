"""The dense torch baseline of a packed model: what the benchmarks compare the packed kernels to.

``dense_generator(model, dtype)`` turns a loaded ``.qgen`` model's packed generator into plain
``nn.Linear`` / ``nn.Conv2d`` / ``nn.ConvTranspose2d`` layers holding the weights the file encodes
(``scale * (code - zero)``, dequantized once, with the epilogue's alpha folded into each output
channel and beta as the bias) followed by the activations. Built from the file itself, not from
a training checkpoint, so the baseline is the same model at any exported width (post-training
quantized ones included). The benchmarks (``bench/``) time against it; the tests hold it to the
packed generator.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from qgen_infer.engine.packed_modules import (
    PackedConv2d,
    PackedConvTranspose2d,
    PackedLinear,
)
from qgen_infer.format import unpack_codes
from qgen_infer.format.schema import channel_axis
from qgen_infer.models.layers import Reshape
from qgen_infer.quant import dequantize

ACTIVATIONS = {"leaky_relu": lambda ep: nn.LeakyReLU(ep.negative_slope),
               "tanh": lambda ep: nn.Tanh(), "relu": lambda ep: nn.ReLU(),
               "none": lambda ep: nn.Identity()}


def dequantized_weight(mod: Any) -> torch.Tensor:
    """The layer's weight in PyTorch layout, ``alpha * scale * (code - zero)`` per output channel
    (``qgen_infer.quant.dequantize``: the codes and scales as the file stores them)."""
    codes = unpack_codes(mod.packed_codes, mod.weight_shape, mod.bits)
    axis = channel_axis(mod.kind)
    w = dequantize(codes, mod.scale, mod.zero, axis)
    if mod.epilogue.alpha is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        w = w * mod.epilogue.alpha.to(w).reshape(shape)
    return w


def dense_layer(mod: PackedLinear | PackedConv2d | PackedConvTranspose2d) -> nn.Module:
    """One packed layer as its dense torch layer (weight :func:`dequantized_weight`, bias the
    epilogue's beta), without the activation."""
    w = dequantized_weight(mod)
    if isinstance(mod, PackedLinear):
        dense: nn.Module = nn.Linear(w.shape[1], w.shape[0])
    elif isinstance(mod, PackedConv2d):
        dense = nn.Conv2d(w.shape[1], w.shape[0], mod.kernel_size, mod.stride, mod.padding,
                          mod.dilation)
    else:
        dense = nn.ConvTranspose2d(w.shape[0], w.shape[1], mod.kernel_size, mod.stride,
                                   mod.padding, mod.output_padding, 1, True, mod.dilation)
    ep = mod.epilogue
    with torch.no_grad():
        dense.weight.copy_(w)
        dense.bias.copy_(ep.beta if ep.beta is not None else torch.zeros_like(dense.bias))
    return dense


def dense_generator(model: Any, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``model.generator`` as dense torch layers in ``dtype`` on ``model.device``."""
    layers: list[tuple[str, nn.Module]] = []
    for name, mod in model.generator.named_children():
        if isinstance(mod, (PackedLinear, PackedConv2d, PackedConvTranspose2d)):
            ep = mod.epilogue
            layers += [(name, dense_layer(mod)), (f"{name}_act", ACTIVATIONS[ep.activation](ep))]
        elif isinstance(mod, Reshape):
            layers.append((name, mod))
        else:
            raise ValueError(f"dense baseline: unsupported layer {name} ({type(mod).__name__})")
    return nn.Sequential(OrderedDict(layers)).to(model.device, dtype).eval().requires_grad_(False)
