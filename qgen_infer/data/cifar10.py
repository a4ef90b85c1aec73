"""CIFAR-10 from the binary release (``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``) or
from the JPEG copy (``cifar10-jpeg-27k.zip`` or its unpacked ``train/`` and ``test/`` folders; see
``cifar10_jpeg.py``).

The binary release is read as its training batches (the test batch alone when no training batch
is there), and evaluation takes the last 10% of them. The JPEG copy is read as its ``train/``
images followed by the first 1,000 of its ``test/`` images (sorted-path order), and those 1,000
are its evaluation images: :func:`load_cifar10_split`.

Each batch file (``data_batch_1.bin`` ... ``data_batch_5.bin``, ``test_batch.bin``; 10,000 records
each) is a plain run of 3073-byte records::

    byte 0          label, 0..9
    bytes 1..1024   red   channel, 32x32, row-major
    bytes 1025..2048 green channel
    bytes 2049..3072 blue  channel

so a record's pixels are already CHW. The Python version (``cifar-10-batches-py/``) is a set of
pickles, and unpickling a file can run arbitrary code: it is refused, never opened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qgen_infer.data.cifar10_jpeg import ZIP_NAME, find_jpeg_copy, load_jpeg_parts
from qgen_infer.data.files import file_size, one_line, read_prefix, require_root
from qgen_infer.errors import DataError

RECORD_BYTES = 1 + 3 * 32 * 32
BIN_FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
_WHAT = f"{BIN_FOLDER}/data_batch_1..5.bin or test_batch.bin, or {ZIP_NAME}"
# Evaluation images of the JPEG copy by default: the first 1,000 of test/ in sorted-path order.
JPEG_EVAL_IMAGES = 1000
_PICKLE_HINT = ("the Python (pickle) version of CIFAR-10 is refused because unpickling can run "
                "code; download the binary version (cifar-10-binary.tar.gz, which unpacks to "
                f"{BIN_FOLDER}/)")


def _refuse_pickle(path: Path) -> None:
    """A DataError when ``path`` looks like a pickle (protocol 2+ starts with 0x80, protocol)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise DataError(f"{path}: looks like a Python pickle; {_PICKLE_HINT}")


def read_cifar10_batch(path: str | Path, limit: int | None = None) -> np.ndarray:
    """One binary batch file as uint8 [N, 3, 32, 32] (the first ``limit`` records when given).

    The file length must be a whole number of 3073-byte records and every label 0..9; anything
    else is a truncated or foreign file."""
    path = Path(path)
    _refuse_pickle(path)
    size = file_size(path)
    if size == 0 or size % RECORD_BYTES:
        raise DataError(f"{path}: {size} bytes is not a whole number of {RECORD_BYTES}-byte "
                        f"CIFAR-10 records (1 label byte + 3072 pixel bytes); truncated or not a "
                        f"CIFAR-10 binary batch")
    count = size // RECORD_BYTES if limit is None else min(size // RECORD_BYTES, limit)
    records = np.frombuffer(read_prefix(path, count * RECORD_BYTES), dtype=np.uint8)
    records = records.reshape(count, RECORD_BYTES)
    if records[:, 0].max(initial=0) > 9:
        raise DataError(f"{path}: labels outside 0..9; corrupt file or not CIFAR-10 binary")
    return records[:, 1:].reshape(-1, 3, 32, 32)


def find_cifar10_batches(root: str | Path, part: str | None = None) -> list[Path]:
    """The batch files for ``part`` ("train" = the data batches present, "test" = test_batch,
    None = train if any data batch is present else test), from ``root/cifar-10-batches-bin`` or
    ``root`` itself; ``root`` may also be one batch file."""
    root_path = require_root(root, "cifar10", _WHAT)
    if root_path.is_file():
        return [root_path]
    if part not in (None, "train", "test"):
        raise DataError(f"cifar10: unknown part {part!r}; choose 'train' or 'test'")
    folder = root_path / BIN_FOLDER if (root_path / BIN_FOLDER).is_dir() else root_path
    train = [folder / name for name in TRAIN_FILES if (folder / name).is_file()]
    test = [folder / name for name in TEST_FILES if (folder / name).is_file()]
    found = {"train": train, "test": test, None: train or test}[part]
    if found:
        return found
    pickles = [root_path / "cifar-10-batches-py", folder / "data_batch_1", folder / "test_batch"]
    if any(p.exists() for p in pickles):
        raise DataError(f"cifar10: found only the Python version in {root_path}; {_PICKLE_HINT}")
    raise DataError(f"cifar10: no binary batches and no JPEG copy in {root_path} (looked for "
                    f"{_WHAT}, or train/ and test/ folders of JPEGs); pass the folder holding "
                    f"one of them")


def load_cifar10(root: str | Path, limit: int | None = None,
                 part: str | None = None) -> np.ndarray:
    """CIFAR-10 images as uint8 [N, 3, 32, 32], batch files concatenated in order."""
    arrays = []
    remaining = limit
    for path in find_cifar10_batches(root, part):
        if remaining is not None and remaining <= 0:
            break
        arrays.append(read_cifar10_batch(path, remaining))
        if remaining is not None:
            remaining -= len(arrays[-1])
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def jpeg_copy_at(root: str | Path | None) -> Path | None:
    """The JPEG copy (zip or unpacked folder) that "cifar10" reads at ``root``: None when
    binary batches are there (the canonical release wins) or no copy is."""
    root_path = require_root(root, "cifar10", _WHAT)
    if root_path.is_dir():
        folder = root_path / BIN_FOLDER if (root_path / BIN_FOLDER).is_dir() else root_path
        if any((folder / name).is_file() for name in (*TRAIN_FILES, *TEST_FILES)):
            return None
    return find_jpeg_copy(root_path)


def load_cifar10_images(root: str | Path, limit: int | None = None) -> np.ndarray:
    """All images the registry serves for "cifar10", uint8 [N, 3, 32, 32]: the binary release's
    training batches (:func:`load_cifar10`), or the JPEG copy's ``train/`` images followed by the
    first 1,000 of its ``test/`` images; the first ``limit`` of them when given."""
    jpeg = jpeg_copy_at(root)
    if jpeg is None:
        return load_cifar10(root, limit)
    train, test = load_jpeg_parts(jpeg, limit)
    images = np.concatenate([train, test[:JPEG_EVAL_IMAGES]])
    return images if limit is None else images[:limit]


def load_cifar10_split(root: str | Path, eval_size: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, eval) uint8 images of the JPEG copy at ``root``: ``train/`` whole, and the first
    ``eval_size`` (default 1,000, or all of a smaller ``test/``) images of ``test/`` in
    sorted-path order; None for the binary release, which the registry splits like the other
    data sets."""
    jpeg = jpeg_copy_at(root)
    if jpeg is None:
        return None
    train, test = load_jpeg_parts(jpeg)
    count = min(JPEG_EVAL_IMAGES, len(test)) if eval_size is None else eval_size
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(test):
        raise DataError(f"cifar10: the evaluation images are the first of the {len(test)} in "
                        f"test/ of {jpeg}; eval_size must be between 1 and {len(test)}, "
                        f"got {eval_size!r}")
    return train, test[:count]
