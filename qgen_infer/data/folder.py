"""A folder of PNG / JPEG images, read with Pillow.

Files are found recursively (so an ImageFolder-style ``root/<class>/*.png`` tree works) and
taken in sorted order of their path relative to ``root``, which makes the order, and so any
split, the same on every machine. If every image is greyscale the result has 1 channel (mode
L), else 3 (RGB; alpha is dropped, palettes expanded).

Without ``image_size`` every image must have the size of the first, and the result keeps it.
With ``image_size`` each image is centre-cropped to its largest square and resized to
``image_size`` x ``image_size`` (bilinear, antialiased).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError, DecompressionBombWarning

from qgen_infer.data.convert import resize_square, uint8_to_unit
from qgen_infer.data.files import one_line, require_root
from qgen_infer.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B")
_WHAT = "*.png / *.jpg / *.jpeg images"


def list_images(root: str | Path) -> list[Path]:
    """The image files under ``root``, in sorted relative-path order."""
    root_path = require_root(root, "folder", _WHAT)
    if not root_path.is_dir():
        raise DataError(f"folder: {root_path} is not a folder; pass the folder holding {_WHAT}")
    files = sorted((p for p in root_path.rglob("*")
                    if p.suffix.lower() in EXTENSIONS and p.is_file()),
                   key=lambda p: p.relative_to(root_path).as_posix())
    if not files:
        raise DataError(f"folder: no {_WHAT} in {root_path} (searched subfolders too)")
    return files


def _to_array(image: Image.Image, grey: bool) -> np.ndarray:
    """uint8 [C, H, W] of one opened image, in L (grey) or RGB."""
    if grey and image.mode.startswith("I;16"):
        # Pillow's I;16 -> L conversion clips at 255 instead of scaling; 65535 / 257 = 255.
        wide = np.asarray(image, dtype=np.float64)
        return np.rint(wide / 257.0).astype(np.uint8)[None]
    array = np.asarray(image.convert("L" if grey else "RGB"))
    return array[None] if grey else array.transpose(2, 0, 1)


def _centre_square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[:, top:top + side, left:left + side]


def load_folder(root: str | Path, limit: int | None = None,
                image_size: int | None = None) -> torch.Tensor:
    """The images under ``root`` as float32 [N, C, H, W] in [-1, 1] (the first ``limit`` files
    in sorted order when given)."""
    files = list_images(root)[:limit]
    # Pass 1 reads headers only (cheap) to choose L or RGB for all; pass 2 decodes one at a time
    # so no more than one file is open and no decoded PIL image is kept.
    grey = all(_open(path, decode=False).mode in GREY_MODES for path in files)
    arrays: list[np.ndarray] = []  # uint8 [C, H, W] each, without image_size
    resized: list[torch.Tensor] = []  # float [1, C, S, S] each, with image_size
    for path in files:
        with _open(path, decode=True) as image:
            array = _to_array(image, grey)
        if image_size is not None:
            # sizes may differ, so each image is cropped and resized on its own
            resized.append(resize_square(uint8_to_unit(_centre_square(array)[None]), image_size))
            continue
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"folder: {path} is {array.shape[2]}x{array.shape[1]} but {files[0]} "
                            f"is {arrays[0].shape[2]}x{arrays[0].shape[1]}; pass image_size to "
                            f"crop and resize them all to one square size")
        arrays.append(array)
    return torch.cat(resized) if image_size is not None else uint8_to_unit(np.stack(arrays))


def _open(path: Path, decode: bool) -> Image.Image:
    """``path`` opened with Pillow (decoded when ``decode``, so a truncated file fails here and
    names itself); without ``decode`` the file is closed again after its header is read."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 89M and 179M pixels (a 97 KB PNG can decode to 100 MB):
            # refused here in one line, not a warning on stderr followed by the allocation
            warnings.simplefilter("error", DecompressionBombWarning)
            image = Image.open(path)
            if decode:
                image.load()
            else:
                image.close()  # mode and size stay readable after close
    except (UnidentifiedImageError, DecompressionBombError, DecompressionBombWarning, OSError,
            ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable image ({one_line(exc)})") from None
    return image
