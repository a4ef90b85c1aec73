"""A ``.npy`` file written a block of rows at a time, in order, so that N results need neither
memory nor address space: only the block being written.

The header for the full shape is written first and the file's blocks are reserved
(``posix_fallocate``), so a full disk is a one-line error before any work, not a failure half way
or a SIGBUS of a memory map. ``writer[start:stop] = rows`` appends (``start`` must be the rows
written so far), ``writer[start:stop]`` reads rows back, and :meth:`NpyRowWriter.finish` closes
the file, cut to the rows written when a run was interrupted.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

from qgen_infer.atomic import write_error
from qgen_infer.errors import QgenError


def _header(shape: tuple[int, ...], dtype: np.dtype, length: int | None = None) -> bytes:
    """A version 1.0 ``.npy`` header; padded with spaces to ``length`` bytes if given (a
    shorter shape's header then fits exactly where the declared one was)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": shape})
    text = buffer.getvalue()
    if length is not None and len(text) < length:
        # magic (6) + version (2) + little-endian u16 length, then the dict ending in "\n"
        body = text[10:-1] + b" " * (length - len(text)) + b"\n"
        text = text[:8] + struct.pack("<H", len(body)) + body
    return text


class NpyRowWriter:
    """``shape[0]`` rows of ``shape[1:]`` float32 values, written to ``path`` in order."""

    def __init__(self, path: str | Path, shape: tuple[int, ...],
                 dtype: np.dtype | type = np.float32) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.header = _header(self.shape, self.dtype)
        self.rows = 0
        try:
            self._file = open(self.path, "wb+")
            self._file.write(self.header)
            self._file.flush()
            size = len(self.header) + self.shape[0] * self.row_bytes
            if size > len(self.header):
                os.posix_fallocate(self._file.fileno(), 0, size)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def __len__(self) -> int:
        return self.shape[0]

    def _span(self, index: slice) -> tuple[int, int]:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("NpyRowWriter takes contiguous row slices only")
        start, stop, _ = index.indices(self.shape[0])
        return start, max(start, stop)

    def __setitem__(self, index: slice, rows: np.ndarray) -> None:
        start, stop = self._span(index)
        if start != self.rows:
            raise QgenError(f"{str(self.path)!r}: rows must be written in order (next row "
                            f"{self.rows}, got {start})")
        block = np.ascontiguousarray(rows, dtype=self.dtype)
        if block.shape != (stop - start, *self.shape[1:]):
            raise QgenError(f"{str(self.path)!r}: a block of shape {block.shape} for rows "
                            f"{start}..{stop - 1}")
        try:
            self._file.seek(len(self.header) + start * self.row_bytes)
            self._file.write(block.tobytes())
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.rows = stop

    def __getitem__(self, index: slice) -> np.ndarray:
        """Rows already written, read back from the file."""
        start, stop = self._span(index)
        stop = min(stop, self.rows)
        count = max(stop - start, 0)
        self._file.flush()
        data = os.pread(self._file.fileno(), count * self.row_bytes,
                        len(self.header) + start * self.row_bytes)
        return np.frombuffer(bytearray(data), dtype=self.dtype).reshape(count, *self.shape[1:])

    def finish(self) -> None:
        """Close the file; if fewer rows than declared were written, rewrite the header with
        the rows written and cut the file there (a reader sees a complete, shorter array)."""
        try:
            if self.rows < self.shape[0]:  # fewer digits: the header can only shrink
                header = _header((self.rows, *self.shape[1:]), self.dtype, len(self.header))
                self._file.seek(0)
                self._file.write(header)
                self._file.truncate(len(header) + self.rows * self.row_bytes)
            self._file.close()
        except OSError as exc:
            raise write_error(self.path, exc) from None
