"""MNIST in its original IDX format.

An IDX image file (``*-images-idx3-ubyte``, raw or gzip) is::

    offset  size  field
    0       4     magic, big-endian: 0x00000803 (two zero bytes, type 0x08 = uint8, 3 dimensions)
    4       4     N, big-endian uint32 (number of images)
    8       4     rows, big-endian uint32 (28)
    12      4     cols, big-endian uint32 (28)
    16      N*rows*cols  pixels, uint8, image after image, row-major; 0 = background

The loader looks in ``root`` and in ``root/MNIST/raw`` (torchvision's layout) and prefers the
60,000-image ``train-`` file over the 10,000-image ``t10k-`` file. The project's machines hold only
``t10k`` (the first 9,000 images train, the last 1,000 evaluate; see ``split.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qgen_infer.data.files import first_existing, read_file, require_root
from qgen_infer.errors import DataError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
HEADER_BYTES = 16

# Official names, the dotted variant some mirrors use, each raw or gzip.
_NAMES = ("{p}-images-idx3-ubyte", "{p}-images.idx3-ubyte")
_PARTS = {"train": "train", "test": "t10k"}
_WHAT = "train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz]"


def read_idx_images(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The images of one IDX3 file as uint8 [N, rows, cols] (the first ``limit`` when given).

    The header is validated against the file: magic, and length == 16 + N * rows * cols."""
    path = Path(path)
    data = read_file(path)  # the whole file: 7.8 MB for t10k, and the length check needs it
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic == IDX_LABELS_MAGIC:
        raise DataError(f"{path}: is an IDX label file (magic 0x00000801); pass the images file")
    if magic is not None and magic != IDX_IMAGES_MAGIC:
        raise DataError(f"{path}: not an IDX image file (magic 0x{magic:08x}, "
                        f"expected 0x{IDX_IMAGES_MAGIC:08x})")
    if len(data) < HEADER_BYTES:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its header)")
    n, rows, cols = (int(v) for v in np.frombuffer(data, dtype=">u4", count=3, offset=4))
    expected = HEADER_BYTES + n * rows * cols
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: {len(data)} bytes, the header ({n} images of "
                        f"{rows}x{cols}) needs {expected}")
    count = n if limit is None else min(n, limit)
    pixels = np.frombuffer(data, dtype=np.uint8, count=count * rows * cols, offset=HEADER_BYTES)
    return pixels.reshape(count, rows, cols)


def find_mnist_images(root: str | Path, part: str | None = None) -> Path:
    """The IDX images file for ``part`` ("train", "test", or None = train if present else test)
    under ``root`` or ``root/MNIST/raw``; ``root`` may also be the file itself."""
    root_path = require_root(root, "mnist", _WHAT)
    if root_path.is_file():
        return root_path
    if part is not None and part not in _PARTS:
        raise DataError(f"mnist: unknown part {part!r}; choose 'train' or 'test'")
    prefixes = [_PARTS[part]] if part else list(_PARTS.values())
    folders = [root_path, root_path / "MNIST" / "raw"]
    candidates = [folder / (name.format(p=prefix) + ext)
                  for prefix in prefixes for folder in folders
                  for name in _NAMES for ext in ("", ".gz")]
    found = first_existing(candidates)
    if found is None:
        raise DataError(f"mnist: no IDX images file in {root_path} or {folders[1]} "
                        f"(looked for {_WHAT}); pass the folder that holds it")
    return found


def load_mnist(root: str | Path, limit: int | None = None,
               part: str | None = None) -> np.ndarray:
    """MNIST images as uint8 [N, 1, 28, 28] from the IDX file under ``root``."""
    return read_idx_images(find_mnist_images(root, part), limit)[:, None]
