"""Reading the user's ``.npy`` arrays safely, and writing results atomically.

``np.load`` never unpickles here (``allow_pickle=False``), and every way it can fail on a
malformed file — ValueError, OverflowError, tokenizer SyntaxErrors in the header, EOFError,
UnicodeDecodeError — becomes one :class:`QgenError` line. The header is parsed and its declared
size held to the file's size first, so a truncated file or an absurd shape is refused before
numpy allocates anything.
Dtypes are handled explicitly: real floats are converted to native float32 (a non-native byte
order is converted and said so); integers, booleans, complex and object arrays are refused.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from qgen_infer.atomic import write_atomic
from qgen_infer.errors import QgenError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _check_header(path: Path, what: str) -> None:
    """Parse the header ourselves and hold the declared size to the file's size before
    ``np.load`` runs: numpy allocates the whole declared array first and only then finds the
    data missing, so a truncated file or a forged shape like (10**8, 7) would reserve gigabytes.
    Python ints here, so shapes such as (2**62, 2**62) cannot overflow the arithmetic."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            # 3.0 differs from 2.0 only in a utf-8 (not latin-1) header: same for ASCII headers
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            data_start = f.tell()
    except Exception as exc:  # ValueError, SyntaxError, tokenize.TokenError, OverflowError, ...
        raise QgenError(f"{what} file {str(path)!r} has a malformed .npy header "
                        f"({_one_line(exc)})") from None
    if dtype.hasobject:
        raise QgenError(f"{what} file {str(path)!r} holds a Python object array (saved with "
                        f"allow_pickle=True), which is never unpickled here; save a float array")
    if any(int(d) < 0 for d in shape):
        raise QgenError(f"{what} file {str(path)!r} declares a negative shape {shape}")
    need = math.prod(int(d) for d in shape) * dtype.itemsize
    have = path.stat().st_size - data_start
    if have < need:
        raise QgenError(f"{what} file {str(path)!r} is truncated: its header declares shape "
                        f"{shape} of {dtype} ({need:,} bytes) but only {have:,} bytes follow")


def _read_npy(path: str | Path, what: str, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise QgenError(f"{what} file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise QgenError(f"{what} file {str(path)!r} is not a .npy array (save it with numpy.save)")
    _check_header(path, what)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:  # np.load raises many undocumented types on malformed headers
        raise QgenError(f"{what} file {str(path)!r} is not a readable .npy array "
                        f"({_one_line(exc)})") from None
    if not isinstance(arr, np.ndarray):
        raise QgenError(f"{what} file {str(path)!r} holds no single array")
    return arr


def _as_float32(arr: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    kind = arr.dtype.kind
    if kind == "c":
        raise QgenError(f"{what} in {str(path)!r} are complex ({arr.dtype}); pass real values")
    if kind != "f":
        raise QgenError(f"{what} in {str(path)!r} have dtype {arr.dtype}; a float array is "
                        f"needed (e.g. arr.astype('float32'))")
    if not arr.dtype.isnative:
        print(f"note: {what} in {str(path)!r} are stored in non-native byte order "
              f"({arr.dtype.str}); converted to native float32", file=sys.stderr)
    # float64 values beyond the float32 range become inf here, refused by _check_finite in one
    # line rather than with numpy's RuntimeWarning on a second stderr line
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.size == 0:
        raise QgenError(f"{what} in {str(path)!r} are empty (shape {arr.shape})")
    _check_finite(out, path, what)
    return out


def _check_finite(out: np.ndarray, path: str | Path, what: str, first_row: int = 0) -> None:
    bad = ~np.isfinite(out)
    if bad.any():
        at = np.argwhere(bad)[0]
        at[0] += first_row
        raise QgenError(f"{what} in {str(path)!r} contain {int(bad.sum())} NaN or infinite "
                        f"values, or values beyond the float32 range (first at index "
                        f"{tuple(int(i) for i in at)})")


def load_measurements(path: str | Path, m: int) -> np.ndarray:
    """``y.npy`` as float32 ``[N, m]``."""
    return _as_float32(_measurements_array(path, m, mmap=False), path, "measurements")


def open_measurements(path: str | Path, m: int) -> np.ndarray:
    """``y.npy`` ``[N, m]`` memory-mapped, read-only: the checks of :func:`load_measurements`
    that need no values are made, nothing else is read. :func:`measurement_rows` reads rows,
    so a file larger than memory is read in chunks."""
    arr = _measurements_array(path, m, mmap=True)
    if arr.dtype.kind != "f":
        _as_float32(arr[:0], path, "measurements")  # its one-line refusal of the dtype
    if arr.shape[0] == 0:
        raise QgenError(f"measurements in {str(path)!r} are empty (shape {arr.shape})")
    if not arr.dtype.isnative:
        print(f"note: measurements in {str(path)!r} are stored in non-native byte order "
              f"({arr.dtype.str}); converted to native float32", file=sys.stderr)
    return arr


def measurement_rows(arr: np.ndarray, start: int, stop: int, path: str | Path) -> np.ndarray:
    """Rows ``[start, stop)`` of :func:`open_measurements`'s array as float32, checked finite
    (an error names the row's index in the whole file)."""
    # a copy (the map is read-only); float32 overflow is _check_finite's one line, not a warning
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(arr[start:stop], dtype=np.float32, order="C")
    _check_finite(out, path, "measurements", first_row=start)
    return out


def _measurements_array(path: str | Path, m: int, mmap: bool) -> np.ndarray:
    arr = _read_npy(path, "measurements", mmap=mmap)
    if arr.ndim != 2:
        raise QgenError(f"measurements in {str(path)!r} must be a 2-D array (N, {m}), got "
                        f"shape {arr.shape}")
    if arr.shape[1] != m:
        raise QgenError(f"measurements in {str(path)!r} have {arr.shape[1]} values per image but "
                        f"the model takes m = {m}")
    return arr


def load_images_npy(path: str | Path, image_shape: list[int] | tuple[int, ...],
                    what: str = "images") -> np.ndarray:
    """An image array ``[N, C, H, W]`` (or ``[N, H, W]`` for one channel) in [-1, 1], float32."""
    arr = _read_npy(path, what)
    c, h, w = image_shape
    if arr.ndim == 3 and c == 1:
        arr = arr[:, None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (c, h, w):
        raise QgenError(f"{what} in {str(path)!r} must have shape (N, {c}, {h}, {w}), got "
                        f"{arr.shape}")
    out = _as_float32(arr, path, what)
    lo, hi = float(out.min()), float(out.max())
    if lo < -1.0001 or hi > 1.0001:
        raise QgenError(f"{what} in {str(path)!r} range over [{lo:.3g}, {hi:.3g}]; images must "
                        f"be scaled to [-1, 1]")
    return out


def save_npy_atomic(path: str | Path, arr: np.ndarray) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file; a failed
    write is one :class:`QgenError` line."""
    write_atomic(path, lambda f: np.save(f, arr))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))
