"""Data sets that ship inside installed PyPI packages, so a fresh install can train and
reconstruct with no download and no data folder.

``digits``: scikit-learn's ``load_digits()``, 1,797 greyscale 8 x 8 handwritten digits with
integer values 0..16 (read from a CSV inside the sklearn wheel), mapped by v / 8 - 1 to [-1, 1]
and upsampled to 16 x 16 (bilinear) -> [1797, 1, 16, 16]. It stands in for MNIST (the "mlp"
family).

``patches``: colour 32 x 32 patches cut with stride 16, row by row, from four photographs that the
scikit-image wheel bundles in ``skimage/data`` (astronaut, chelsea, coffee, rocket: no pooch
download) -> [3259, 3, 32, 32]. It stands in for CIFAR-10 / SVHN (the "dcgan" family).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qgen_infer.errors import DataError

DIGITS_SIDE = 16
PATCH_SIDE = 32
PATCH_STRIDE = 16
# skimage.data functions whose files are in the wheel itself (skimage/data/*.png|jpg); the other
# images of skimage.data are fetched with pooch on first use, which this package never does.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def load_digits_images() -> torch.Tensor:
    """scikit-learn's digits as float32 [1797, 1, 16, 16] in [-1, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits needs scikit-learn (pip install scikit-learn)") from None
    images = load_digits().images  # float64 [1797, 8, 8], integers 0..16
    unit = torch.from_numpy(images.astype(np.float32))[:, None] / 8.0 - 1.0
    # Bilinear weights are non-negative and sum to one, so the result stays in [-1, 1].
    return F.interpolate(unit, size=(DIGITS_SIDE, DIGITS_SIDE), mode="bilinear",
                         align_corners=False).clamp_(-1.0, 1.0)


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError:
        raise DataError("patches needs scikit-image (pip install scikit-image)") from None
    try:
        image = getattr(skimage.data, name)()
    except Exception as exc:  # a missing bundled file surfaces as a pooch/network error
        raise DataError(f"patches: scikit-image's bundled photo '{name}' cannot be read "
                        f"({type(exc).__name__}); reinstall scikit-image") from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"patches: scikit-image's '{name}' is {image.dtype} {image.shape}, "
                        f"expected uint8 RGB")
    return image


def load_patches() -> np.ndarray:
    """Colour patches as uint8 [N, 3, 32, 32], deterministic: photos in ``PHOTOS`` order, patches
    top-left corners on a 16-pixel grid, row-major within each photo."""
    out = []
    for name in PHOTOS:
        windows = np.lib.stride_tricks.sliding_window_view(
            _photo(name), (PATCH_SIDE, PATCH_SIDE), axis=(0, 1))  # [H', W', 3, 32, 32]
        out.append(windows[::PATCH_STRIDE, ::PATCH_STRIDE].reshape(-1, 3, PATCH_SIDE, PATCH_SIDE))
    return np.concatenate(out)
