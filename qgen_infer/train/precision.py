"""The precision the networks compute in during training.

``fp32``: everything in float32 (the paper's setting, and how every shipped model was trained).
``bf16``: the generator's and the sensing network's layers run under CPU/CUDA autocast in
bfloat16 (on CPUs with AMX or AVX-512 BF16, oneDNN's bf16 convolutions are several times faster
than its fp32 ones), and each network's output is cast back to float32. The master weights, Adam,
the latent code z and its proximal update, the step size and every loss stay in float32; the
weights each layer sees are rounded to bfloat16 (8 significant bits), which changes the numbers
(not the algorithm): see bench/results/cifar10-training-speed.md for the check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


class Autocast:
    """``net`` as a callable that runs under autocast in ``dtype`` and returns float32."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        self.net = net
        self.dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.net(x)
        return out.float()


def in_precision(net: nn.Module, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` itself for "fp32", an :class:`Autocast` wrapper for "bf16"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return net if precision == "fp32" else Autocast(net, torch.bfloat16)
