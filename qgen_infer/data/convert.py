"""Pixel conversion shared by every loader: uint8 NCHW arrays to float32 tensors in [-1, 1], and
square resizing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qgen_infer.errors import DataError

# uint8 v -> v / 127.5 - 1, so 0 -> -1.0 and 255 -> +1.0 exactly. A 256-entry table makes the
# mapping one gather (fast on the 7.8 M MNIST pixels) and defines the float value of every code
# once, so tests can compare pixels for exact equality.
UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)

# Images converted per step when resizing, to bound the float32 working memory (STL10's
# unlabeled split is 100,000 x 3 x 96 x 96).
CHUNK = 1024


def check_image_size(image_size: int | None) -> None:
    """A DataError unless ``image_size`` is None or a positive int."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float NCHW ``images`` to ``size`` x ``size`` (bilinear, antialiased when shrinking:
    an area-like filter, so a 96 -> 64 STL10 downscale does not alias). The filter weights are
    non-negative and sum to one, so values stay in [-1, 1]; the clamp only removes rounding."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.clamp_(-1.0, 1.0)


def uint8_to_unit(images: np.ndarray, image_size: int | None = None) -> torch.Tensor:
    """uint8 ``images`` [N, C, H, W] -> float32 tensor in [-1, 1] (v / 127.5 - 1), resized to
    ``image_size`` x ``image_size`` when given."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"expected a uint8 [N, C, H, W] array, got {images.dtype} {images.shape}")
    if image_size is None or images.shape[-2:] == (image_size, image_size):
        return torch.from_numpy(UINT8_TO_UNIT[images])
    n, c = images.shape[:2]
    out = torch.empty((n, c, image_size, image_size), dtype=torch.float32)
    for start in range(0, n, CHUNK):
        chunk = torch.from_numpy(UINT8_TO_UNIT[images[start:start + CHUNK]])
        out[start:start + CHUNK] = resize_square(chunk, image_size)
    return out
