"""The data sets by name: what each is, and ``load_images`` / ``load_split`` over all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qgen_infer.data.cifar10 import load_cifar10_images, load_cifar10_split
from qgen_infer.data.convert import check_image_size, resize_square, uint8_to_unit
from qgen_infer.data.embedded import load_digits_images, load_patches
from qgen_infer.data.folder import load_folder
from qgen_infer.data.mnist import load_mnist
from qgen_infer.data.split import split_train_eval
from qgen_infer.data.stl10 import load_stl10
from qgen_infer.data.svhn import load_svhn
from qgen_infer.errors import DataError

DEFAULT_DATASET = "digits"
SPLITS = ("train", "eval", "all")


@dataclass(frozen=True)
class _Spec:
    image_shape: tuple[int, int, int] | None  # [C, H, W] as loaded without image_size
    family: str | None  # "mlp" (small greyscale) or "dcgan" (colour); None: depends on the data
    eval_size: int | None  # default evaluation images; None: 10% of what was loaded
    embedded: bool  # ships inside an installed package; takes no root
    description: str


_SPECS: dict[str, _Spec] = {
    "mnist": _Spec((1, 28, 28), "mlp", 1000, False,
                   "MNIST handwritten digits, IDX files (train- preferred, else t10k-); "
                   "eval = the last 1,000 (of t10k: first 9,000 train, last 1,000 eval)"),
    "cifar10": _Spec((3, 32, 32), "dcgan", None, False,
                     "CIFAR-10: the binary version (cifar-10-batches-bin/*.bin; pickles refused; "
                     "eval = the last 10% of the training batches) or the JPEG copy "
                     "(cifar10-jpeg-27k.zip or its unpacked train/ and test/ folders: train = "
                     "train/, eval = the first 1,000 of test/ in sorted-path order)"),
    "svhn": _Spec((3, 32, 32), "dcgan", None, False,
                  "SVHN cropped digits, train_32x32.mat (else test_32x32.mat)"),
    "stl10": _Spec((3, 96, 96), "dcgan", None, False,
                   "STL-10, binary version (stl10_binary/train_X.bin, else test_X.bin, else "
                   "unlabeled_X.bin); 96x96, load with image_size=64 for the DCGAN model"),
    "folder": _Spec(None, None, None, False,
                    "a folder of PNG/JPEG images (sorted, recursive), RGB or L if all grey; "
                    "image_size crops to the centre square and resizes"),
    "digits": _Spec((1, 16, 16), "mlp", 297, True,
                    "embedded: scikit-learn's 1,797 8x8 digits upsampled to 16x16 "
                    "(train 1,500 / eval 297); the default, no download"),
    "patches": _Spec((3, 32, 32), "dcgan", None, True,
                     "embedded: 3,259 colour 32x32 patches (stride 16) of scikit-image's bundled "
                     "photos astronaut, chelsea, coffee, rocket; the 10% held out are the last "
                     "ones, the lower 38% of the rocket photo; no download"),
}

DATASETS: tuple[str, ...] = tuple(_SPECS)

_FILE_LOADERS: dict[str, Callable[[Path | str, int | None], np.ndarray]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10_images,
    "svhn": load_svhn,
    "stl10": load_stl10,
}


def _resolve(name: str | None) -> str:
    if name is None:
        return DEFAULT_DATASET
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _SPECS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


def dataset_info(name: str | None) -> dict[str, Any]:
    """What data set ``name`` is (None = the default, "digits"), as a fresh dict:

    ``name``, ``image_shape`` [C, H, W] as loaded without ``image_size`` (None for "folder": it
    depends on the images), ``family`` ("mlp" for small greyscale, "dcgan" for colour; None for
    "folder", see ``family_for_shape``), ``eval_size`` (default evaluation images; None = 10%),
    ``embedded`` (ships in an installed package, needs no root) and ``description``."""
    key = _resolve(name)
    spec = _SPECS[key]
    return {
        "name": key,
        "image_shape": list(spec.image_shape) if spec.image_shape else None,
        "family": spec.family,
        "eval_size": spec.eval_size,
        "embedded": spec.embedded,
        "description": spec.description,
    }


def family_for_shape(image_shape: tuple[int, ...] | list[int]) -> str:
    """The model family for images of ``image_shape`` [C, H, W]: "mlp" for greyscale up to 32 x
    32 (the MNIST-style MLP generator), else "dcgan"."""
    c, h, w = image_shape[-3:]
    return "mlp" if c == 1 and max(h, w) <= 32 else "dcgan"


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")


def load_images(name: str | None, root: str | Path | None = None, *, limit: int | None = None,
                image_size: int | None = None) -> torch.Tensor:
    """Images of data set ``name`` (one of ``DATASETS``; None = "digits") as float32
    [N, C, H, W] in [-1, 1], uint8 pixels mapped by v / 127.5 - 1.

    ``root``: the folder (or single file) holding the data set's files; embedded sets take none.
    ``limit``: only the first ``limit`` images (files are read only as far as needed where the
    format allows). ``image_size``: resize to a square of that side (bilinear, antialiased);
    for "folder", each image is first cropped to its centre square."""
    key = _resolve(name)
    _check_limit(limit)
    check_image_size(image_size)
    spec = _SPECS[key]
    if spec.embedded and root is not None:
        raise DataError(f"{key} is embedded in an installed package and takes no root "
                        f"(got {str(root)!r}); leave root out")
    if key == "folder":
        if root is None:
            raise DataError("folder needs root=<folder of PNG/JPEG images>")
        return load_folder(root, limit, image_size)
    if key == "digits":
        images = load_digits_images()[:limit]
        return images if image_size is None else resize_square(images, image_size)
    if key == "patches":
        return uint8_to_unit(load_patches()[:limit], image_size)
    return uint8_to_unit(_FILE_LOADERS[key](root, limit), image_size)


def load_split(name: str | None, root: str | Path | None = None, split: str = "eval",
               eval_size: int | None = None, seed: int | None = None, *,
               image_size: int | None = None) -> torch.Tensor:
    """The ``split`` ("eval", the default as in ``qgen-measure --split``, "train" or "all") of
    data set ``name``.

    ``eval_size`` defaults per data set (mnist 1,000: of t10k the first 9,000 train, the last
    1,000 evaluate; digits 297, so 1,500 train; others 10% of the images, at least 1). ``seed``
    None splits contiguously (eval = the last images), an int by a seeded permutation; see
    ``split_train_eval``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    key = _resolve(name)
    if split != "all" and seed is None and image_size is None:
        train, evaluation = load_train_eval(key, root, eval_size)
        return train if split == "train" else evaluation
    images = load_images(key, root, image_size=image_size)
    if split == "all":
        return images
    if eval_size is None:
        default = _SPECS[key].eval_size
        eval_size = default if default is not None else max(1, round(0.1 * images.shape[0]))
    train, evaluation = split_train_eval(images, eval_size, seed)
    return train if split == "train" else evaluation


def load_train_eval(name: str | None, root: str | Path | None = None,
                    eval_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) images of data set ``name`` as float32 in [-1, 1], the split every command
    uses. A data set whose files hold a test part of their own (the CIFAR-10 JPEG copy) trains on
    its training part and evaluates on the first ``eval_size`` (default 1,000) test images; the
    others split the images of :func:`load_images` contiguously, the last ``eval_size`` (default
    per data set, see :func:`load_split`) evaluating."""
    key = _resolve(name)
    if key == "cifar10":
        parts = load_cifar10_split(root, eval_size)
        if parts is not None:
            return uint8_to_unit(parts[0]), uint8_to_unit(parts[1])
    images = load_images(key, root)
    if eval_size is None:
        default = _SPECS[key].eval_size
        eval_size = default if default is not None else max(1, round(0.1 * images.shape[0]))
    return split_train_eval(images, eval_size)
