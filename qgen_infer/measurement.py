"""Measurements of images with a loaded model's sensing network: ``y = A(x) + sigma * n``.

The library side of ``qgen-measure``: the command reads and writes files, this computes ``y``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from qgen_infer.errors import QgenError

if TYPE_CHECKING:
    from qgen_infer.engine.loader import QgenModel

CHUNK = 512  # images per forward pass of A: bounds the activation memory of a large x


def _images_tensor(x: torch.Tensor | np.ndarray, image_shape: list[int]) -> torch.Tensor:
    """``x`` as a float32 CPU tensor ``[N, *image_shape]``; user mistakes are a QgenError."""
    if torch.is_tensor(x):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind != "f":  # no silent casts of ints (e.g. uint8 pixels in 0..255)
            raise QgenError(f"images must be a float array in [-1, 1], got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if not t.is_floating_point():
        raise QgenError(f"images must be a float tensor in [-1, 1], got dtype {t.dtype}")
    if t.ndim != 4 or list(t.shape[1:]) != list(image_shape):
        raise QgenError(f"images must have shape (N, {', '.join(map(str, image_shape))}), "
                        f"got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise QgenError("no images to measure")
    if not bool(torch.isfinite(t).all()):
        raise QgenError("images contain NaN or infinite values")
    return t.to("cpu", torch.float32)


def measure(model: QgenModel, x: torch.Tensor | np.ndarray, noise_std: float = 0.0,
            seed: int | None = None) -> torch.Tensor:
    """Measurements ``y = A(x) + noise_std * n``, ``n ~ N(0, I)``: float32 ``[N, m]`` on the CPU.

    ``model``: from :func:`qgen_infer.load`; ``x``: images ``[N, C, H, W]`` in [-1, 1] (a
    tensor or a float array) of the model's image shape. ``noise_std`` is absolute, in the units
    of ``y`` (the sensing net's outputs are not normalised: compare it with ``y.std()``, about 5.5
    for the shipped 1-bit MNIST model). ``seed`` seeds the noise (None: torch's global
    generator); ``qgen-measure --seed S`` writes the ``y`` that ``seed=S`` returns.
    """
    if isinstance(noise_std, bool) or not math.isfinite(float(noise_std)) or noise_std < 0:
        raise QgenError(f"noise_std must be a non-negative number, got {noise_std!r}")
    if seed is not None and not 0 <= seed < 2**63:  # torch.Generator's seed range
        raise QgenError(f"seed must be between 0 and 2**63 - 1, got {seed}")
    xs = _images_tensor(x, model.config["image_shape"])
    sensing, dev = model.sensing, model.device
    with torch.no_grad():
        y = torch.cat([sensing(xs[i:i + CHUNK].to(dev)).float().cpu()
                       for i in range(0, xs.shape[0], CHUNK)])
    if noise_std > 0:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        y = y + float(noise_std) * torch.randn(y.shape, generator=g)
    return y
