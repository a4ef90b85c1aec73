"""STL-10, binary version (``stl10_binary.tar.gz`` -> ``stl10_binary/``).

``train_X.bin`` (5,000 images), ``test_X.bin`` (8,000) and ``unlabeled_X.bin`` (100,000) are
headerless runs of 27,648-byte images (96 x 96 x 3, uint8). Each image is stored channel after
channel (R, G, B), and each channel column-major (MATLAB order): the first 96 bytes are the left
column, top to bottom. So the bytes reshape to [N, 3, 96 (width), 96 (height)] and the last two
axes are swapped to get NCHW. The DCGAN STL-10 model works at 64 x 64: load with
``image_size=64``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qgen_infer.data.files import file_size, first_existing, read_prefix, require_root
from qgen_infer.errors import DataError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
BIN_FOLDER = "stl10_binary"
PARTS = {"train": "train_X.bin", "test": "test_X.bin", "unlabeled": "unlabeled_X.bin"}
_WHAT = f"{BIN_FOLDER}/train_X.bin, test_X.bin or unlabeled_X.bin"


def read_stl10_images(path: str | Path, limit: int | None = None) -> np.ndarray:
    """One ``*_X.bin`` file as uint8 [N, 3, 96, 96] (only the first ``limit`` images are read)."""
    path = Path(path)
    size = file_size(path)
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(f"{path}: {size} bytes is not a whole number of {IMAGE_BYTES}-byte "
                        f"STL-10 images (96x96x3); truncated or not an STL-10 *_X.bin file")
    count = size // IMAGE_BYTES if limit is None else min(size // IMAGE_BYTES, limit)
    pixels = np.frombuffer(read_prefix(path, count * IMAGE_BYTES), dtype=np.uint8)
    return np.ascontiguousarray(pixels.reshape(count, 3, SIDE, SIDE).transpose(0, 1, 3, 2))


def find_stl10_file(root: str | Path, part: str | None = None) -> Path:
    """The images file for ``part`` ("train", "test", "unlabeled", or None = the first present
    in that order) in ``root/stl10_binary`` or ``root``; ``root`` may also be the file itself."""
    root_path = require_root(root, "stl10", _WHAT)
    if root_path.is_file():
        return root_path
    if part is not None and part not in PARTS:
        raise DataError(f"stl10: unknown part {part!r}; choose one of {', '.join(PARTS)}")
    folder = root_path / BIN_FOLDER if (root_path / BIN_FOLDER).is_dir() else root_path
    names = [PARTS[part]] if part else list(PARTS.values())
    found = first_existing([folder / name for name in names])
    if found is None:
        raise DataError(f"stl10: no {' or '.join(names)} in {folder}; pass the folder that holds "
                        f"{BIN_FOLDER}/ (from stl10_binary.tar.gz)")
    return found


def load_stl10(root: str | Path, limit: int | None = None,
               part: str | None = None) -> np.ndarray:
    """STL-10 images as uint8 [N, 3, 96, 96]."""
    return read_stl10_images(find_stl10_file(root, part), limit)
