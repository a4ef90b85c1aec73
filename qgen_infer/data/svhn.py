"""SVHN, cropped-digits format (``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``).

Each file is a MATLAB MAT file holding ``X``, uint8 of MATLAB size [32, 32, 3, N] (height, width,
channel, image) and ``y`` (labels, unused here). The published files are MAT v5, read with
``scipy.io.loadmat``, which parses data and never runs code. A MAT v7.3 file is HDF5 inside; it is
read with h5py when that is installed, where the stored array is the MATLAB one with its axes
reversed: [N, 3, 32 (width), 32 (height)].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from qgen_infer.data.files import first_existing, one_line, require_root
from qgen_infer.errors import DataError

PARTS = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_WHAT = "train_32x32.mat or test_32x32.mat"


def _is_v73(path: Path) -> bool:
    """Whether ``path`` is a MAT v7.3 (HDF5) file: MATLAB writes a 128-byte text header saying
    "MATLAB 7.3" inside a 512-byte HDF5 user block; a bare HDF5 file has the signature at 0."""
    try:
        with open(path, "rb") as f:
            head = f.read(520)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    return (head.startswith(b"MATLAB 7.3") or head.startswith(HDF5_SIGNATURE)
            or head[512:520] == HDF5_SIGNATURE)


def _read_v73(path: Path, limit: int | None) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise DataError(f"{path}: is a MATLAB v7.3 (HDF5) file; install h5py "
                        f"(pip install h5py) to read it, or save it as v5 (-v7)") from None
    try:
        with h5py.File(path, "r") as f:
            if "X" not in f:
                raise DataError(f"{path}: no variable 'X' (the SVHN image array)")
            x = np.asarray(f["X"][:limit])
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: unreadable HDF5 file ({one_line(exc)})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise DataError(f"{path}: 'X' is {x.dtype} {list(x.shape)[::-1]} in MATLAB order, "
                        f"expected uint8 [32, 32, 3, N]")
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2))  # [N, C, W, H] -> [N, C, H, W]


def read_svhn_mat(path: str | Path, limit: int | None = None) -> np.ndarray:
    """``X`` of one SVHN .mat file as uint8 [N, 3, 32, 32] (the first ``limit`` when given)."""
    path = Path(path)
    if _is_v73(path):
        return _read_v73(path, limit)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X"])
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... on bad bytes
        raise DataError(f"{path}: unreadable MAT file ({type(exc).__name__}: "
                        f"{one_line(exc)})") from None
    if "X" not in mat:
        raise DataError(f"{path}: no variable 'X' (the SVHN image array)")
    x = mat["X"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, N]")
    x = x[..., :limit]
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # [H, W, C, N] -> [N, C, H, W]


def find_svhn_file(root: str | Path, part: str | None = None) -> Path:
    """The .mat file for ``part`` ("train", "test", "extra", or None = train if present else
    test) in ``root``; ``root`` may also be the file itself."""
    root_path = require_root(root, "svhn", _WHAT)
    if root_path.is_file():
        return root_path
    if part is not None and part not in PARTS:
        raise DataError(f"svhn: unknown part {part!r}; choose one of {', '.join(PARTS)}")
    names = [PARTS[part]] if part else [PARTS["train"], PARTS["test"]]
    found = first_existing([root_path / name for name in names])
    if found is None:
        raise DataError(f"svhn: no {' or '.join(names)} in {root_path}; pass the folder "
                        f"holding the cropped-digits .mat files")
    return found


def load_svhn(root: str | Path, limit: int | None = None,
              part: str | None = None) -> np.ndarray:
    """SVHN images as uint8 [N, 3, 32, 32]."""
    return read_svhn_mat(find_svhn_file(root, part), limit)
