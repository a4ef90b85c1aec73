"""Finding and reading data files, with every failure turned into a one-line ``DataError``."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

from qgen_infer.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


def one_line(exc: BaseException) -> str:
    """A foreign exception's text on one line, for embedding in a DataError message (the CLI
    prints each error as a single line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def require_root(root: str | Path | None, dataset: str, what: str) -> Path:
    """``root`` as an existing path, or a DataError saying what the dataset expects there.

    ``what`` names the files the loader looks for, so the message says how to fix the call."""
    if root is None:
        raise DataError(f"{dataset} needs a data folder: pass root=<folder holding {what}>")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{dataset}: data folder {path} does not exist (expected {what} there)")
    return path


def first_existing(candidates: Sequence[Path]) -> Path | None:
    """The first of ``candidates`` that is a file, in the order given (the order is the
    preference: e.g. the train split before the test split)."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def read_file(path: Path, *, gunzip: bool = True) -> bytes:
    """All bytes of ``path``, decompressed when it is gzip (detected by its magic bytes, not its
    name, so a renamed file still reads)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if gunzip and head == GZIP_MAGIC:
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({one_line(exc)})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, as a DataError when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None


def read_prefix(path: Path, nbytes: int) -> bytes:
    """The first ``nbytes`` of an uncompressed file (so a ``limit`` on a 2.7 GB STL10 file reads
    only what it needs)."""
    try:
        with open(path, "rb") as f:
            data = f.read(nbytes)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    if len(data) != nbytes:
        raise DataError(f"{path}: truncated file ({len(data)} bytes, expected {nbytes})")
    return data
