"""How much memory a model needs for a batch, and how much this machine can give it.

A reconstruction batch of ``rows`` latent rows (images x restarts) holds, per row, every
generator and sensing activation for the backward pass plus a gradient of each, the latent, and
the largest unfolded convolution buffer, all fp32; the weights come once. The estimate is checked
against a limit *before* anything is allocated, so a file or a flag that asks for 195 GB ends in
one line instead of an allocator crash. The limit is the machine's: on the CPU the memory the
kernel reports available (``MemAvailable``) and the address space left under ``ulimit -v``; on a
CUDA device its free memory. ``QGEN_MEMORY_LIMIT`` (e.g. ``8G``, ``512M``, a byte count)
overrides it.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qgen_infer.conv_geometry import conv2d_output_size
from qgen_infer.errors import QgenError

ENV_LIMIT = "QGEN_MEMORY_LIMIT"
FP32_BYTES = 4
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MemoryPlan:
    """``weight_bytes`` once, plus ``row_bytes`` per latent row of a batch."""

    weight_bytes: int
    row_bytes: int

    def need(self, rows: int) -> int:
        return self.weight_bytes + rows * self.row_bytes


def row_bytes(latent_dim: int, activations: int, workspace: int) -> int:
    """fp32 bytes per latent row: the latent and every activation, each with its gradient, and
    one unfolded convolution buffer."""
    return FP32_BYTES * (2 * (latent_dim + activations) + workspace)


# Layers whose output has their input's shape.
_SAME_SHAPE = (torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid,
               torch.nn.Identity, torch.nn.BatchNorm2d, torch.nn.Dropout)


def _output_shape(module: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape of the common layers from their settings, None for others: the first
    ``meta`` forward of a Linear, Conv2d or BatchNorm imports torch's Python meta kernels, 2-3 s
    in every process that loads a model."""
    if isinstance(module, _SAME_SHAPE):
        return shape
    if isinstance(module, torch.nn.Linear):
        return (*shape[:-1], module.out_features)
    if isinstance(module, torch.nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
        return (shape[0], int(torch.Size(shape[1:]).numel()))
    if type(module) is torch.nn.Conv2d and isinstance(module.padding, tuple) and len(shape) == 4:
        size = [conv2d_output_size(n, k, s, p, d) for n, p, d, k, s in zip(
            shape[2:], module.padding, module.dilation, module.kernel_size, module.stride,
            strict=True)]
        return (shape[0], module.out_channels, *size)
    return None


def sequential_elements(net: torch.nn.Sequential, sample_shape: Sequence[int]) -> int:
    """Activation elements per sample of ``net`` (built on the ``meta`` device): the sum of its
    layers' outputs, from their settings (:func:`_output_shape`) or a forward pass that
    allocates nothing."""
    x, elements = torch.empty(1, *sample_shape, device="meta"), 0
    for module in net:
        shape = _output_shape(module, tuple(x.shape))
        x = module(x) if shape is None else torch.empty(shape, device="meta")
        elements += x.numel()
    return elements


def network_plan(config: dict[str, Any]) -> MemoryPlan:
    """The memory of the fp32 networks ``config`` describes, as ``qgen-eval`` runs them: the
    weights twice (fp32 master weights and their fake-quantized copy) and per latent row the
    generator's and sensing net's activations, counted on the ``meta`` device."""
    from qgen_infer.models import build_generator, build_sensing

    with torch.device("meta"):
        generator, sensing = build_generator(config), build_sensing(config)
    weights = sum(p.numel() for net in (generator, sensing) for p in net.parameters())
    activations = sequential_elements(generator, [config["latent_dim"]]) + \
        sequential_elements(sensing, config["image_shape"])
    return MemoryPlan(weight_bytes=2 * FP32_BYTES * weights,
                      row_bytes=row_bytes(config["latent_dim"], activations, 0))


def human_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str, what: str = ENV_LIMIT) -> int:
    """``"8G"``, ``"512MiB"``, ``"1.5g"``, ``"1000000"`` -> bytes; anything else a QgenError."""
    match = _SIZE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise QgenError(f"{what} must be a positive size such as 8G, 512M or 1000000, "
                        f"got {text!r}"[:200])
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _mem_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _address_space_left() -> int | None:
    """The room left under ``ulimit -v`` (RLIMIT_AS), or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        status = Path("/proc/self/status").read_text()
        used = int(re.search(r"^VmSize:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024
    except (OSError, AttributeError):
        used = 0
    return max(soft - used, 0)


def memory_limit(device: torch.device) -> tuple[int, str]:
    """(bytes, where the number comes from) for work on ``device``."""
    override = os.environ.get(ENV_LIMIT)
    if override:
        return parse_size(override), ENV_LIMIT
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    candidates = [(v, why) for v, why in ((_mem_available(), "available memory"),
                                          (_address_space_left(), "ulimit -v")) if v is not None]
    if not candidates:
        return 1 << 62, "no known limit"
    return min(candidates)


def check_fits(need: int, device: torch.device, what: str, hint: str) -> None:
    """A one-line :class:`QgenError` when ``need`` bytes exceed the limit for ``device``."""
    limit, source = memory_limit(device)
    if need > limit:
        raise QgenError(f"{what} needs about {human_bytes(need)} but {human_bytes(limit)} is "
                        f"available ({source}); {hint}, or set {ENV_LIMIT} to raise the limit")
