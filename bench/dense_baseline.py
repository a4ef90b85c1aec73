"""The dense torch baseline of a packed model: what the benchmarks compare the packed kernels to.

``dense_generator(model, dtype)`` turns a loaded ``.qgen`` model's packed MLP generator into plain
``nn.Linear`` layers holding the weights the file encodes (``scale * (code - zero)``, dequantized
once, with the epilogue's alpha folded into the rows and beta as the bias) followed by the
activations. Built from the file itself, not from a training checkpoint, so the baseline is the
same model at any exported width (post-training quantized ones included).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from qgen_infer.engine.packed_modules import PackedLinear
from qgen_infer.models.layers import Reshape

ACTIVATIONS = {"leaky_relu": lambda ep: nn.LeakyReLU(ep.negative_slope),
               "tanh": lambda ep: nn.Tanh(), "relu": lambda ep: nn.ReLU(),
               "none": lambda ep: nn.Identity()}


def dense_generator(model: Any, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``model.generator`` as dense torch layers in ``dtype`` on ``model.device`` (MLPs only)."""
    layers: list[tuple[str, nn.Module]] = []
    for name, mod in model.generator.named_children():
        if isinstance(mod, PackedLinear):
            w = mod.matrix_weight().dequantize()
            ep = mod.epilogue
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                alpha = ep.alpha if ep.alpha is not None else torch.ones(w.shape[0])
                lin.weight.copy_(alpha.to(w)[:, None] * w)
                lin.bias.copy_(ep.beta if ep.beta is not None else torch.zeros(w.shape[0]))
            layers += [(name, lin), (f"{name}_act", ACTIVATIONS[ep.activation](ep))]
        elif isinstance(mod, Reshape):
            layers.append((name, mod))
        else:
            raise SystemExit(f"dense baseline: unsupported layer {name} ({type(mod).__name__}); "
                             "the benchmarks cover the MNIST MLP")
    return nn.Sequential(OrderedDict(layers)).to(model.device, dtype).eval().requires_grad_(False)
