"""CIFAR-10 as a JPEG copy: ``cifar10-jpeg-27k.zip``, or a folder unpacked from it.

Layout (the same inside the zip and in the folder)::

    train/<class>/NNNN.jpg     training images (25,000 in the shared copy)
    test/<class>/NNNN.jpg      test images (2,000 in the shared copy)

Each part is taken in sorted order of the image paths (``train/airplane/0000.jpg`` first), so the
zip and the unpacked folder give the same arrays on every machine. Images are decoded in memory
with Pillow (never extracted to disk) to uint8 [N, 3, 32, 32]; a source decoded once is kept in
memory (keyed by its path, size and modification time), so loading it again costs no decoding.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from qgen_infer.data.files import one_line
from qgen_infer.errors import DataError

ZIP_NAME = "cifar10-jpeg-27k.zip"
PARTS = ("train", "test")
SIDE = 32
# A member path of the layout: part / class / file name, a JPEG by its extension.
_MEMBER = re.compile(r"^(train|test)/[^/]+/[^/]+\.jpe?g$", re.IGNORECASE)
# Decoded sources, by (resolved path, size in bytes, mtime in ns): -> (train, test), read-only.
_DECODED: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


def find_jpeg_copy(root: Path) -> Path | None:
    """The JPEG copy at ``root``: ``root`` itself when it is a zip file or holds ``train/`` and
    ``test/`` folders, else ``root/cifar10-jpeg-27k.zip``; None when there is none."""
    if root.is_file():
        return root if zipfile.is_zipfile(root) or root.suffix.lower() == ".zip" else None
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    if (root / ZIP_NAME).is_file():
        return root / ZIP_NAME
    return None


def _decode(data: bytes, where: str) -> np.ndarray:
    """One JPEG's bytes as uint8 [32, 32, 3] (greyscale expanded to RGB)."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            image.load()
            if image.size != (SIDE, SIDE):
                raise DataError(f"{where}: image is {image.size[0]}x{image.size[1]}, CIFAR-10 "
                                f"images are {SIDE}x{SIDE}")
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb)
    except (UnidentifiedImageError, DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:
        raise DataError(f"{where}: unreadable JPEG ({one_line(exc)})") from None


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """[N, 32, 32, 3] pieces to one read-only uint8 [N, 3, 32, 32] (NCHW, contiguous)."""
    if not images:
        return np.empty((0, 3, SIDE, SIDE), np.uint8)
    out = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    out.flags.writeable = False  # shared through the cache: nobody may change it in place
    return out


def _read_zip(path: Path, limit: int | None) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if _MEMBER.match(n))
            parts = {part: [n for n in names if n.split("/", 1)[0].lower() == part]
                     for part in PARTS}
            _require_parts(parts, path)
            counts = _counts(parts, limit)
            return {part: _stack([_decode(archive.read(n), f"{path}:{n}")
                                  for n in members[:counts[part]]])
                    for part, members in parts.items()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"{path}: corrupt or unreadable zip file ({one_line(exc)})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None


def _read_folder(root: Path, limit: int | None) -> dict[str, np.ndarray]:
    files = sorted(p.relative_to(root).as_posix() for part in PARTS
                   for p in (root / part).glob("*/*") if p.is_file())
    names = [n for n in files if _MEMBER.match(n)]
    parts = {part: [n for n in names if n.split("/", 1)[0].lower() == part] for part in PARTS}
    _require_parts(parts, root)
    out = {}
    counts = _counts(parts, limit)
    for part, members in parts.items():
        images = []
        for name in members[:counts[part]]:
            try:
                data = (root / name).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {root / name}: {exc.strerror or one_line(exc)}"
                                ) from None
            images.append(_decode(data, str(root / name)))
        out[part] = _stack(images)
    return out


def _counts(parts: dict[str, list[str]], limit: int | None) -> dict[str, int]:
    """How many images of each part to decode for the first ``limit`` of train + test."""
    if limit is None:
        return {part: len(members) for part, members in parts.items()}
    train = min(limit, len(parts["train"]))
    return {"train": train, "test": min(limit - train, len(parts["test"]))}


def _require_parts(parts: dict[str, list[str]], where: Path) -> None:
    missing = [part for part in PARTS if not parts[part]]
    if missing:
        raise DataError(f"cifar10: no {' or '.join(f'{p}/<class>/*.jpg' for p in missing)} in "
                        f"{where}; expected the layout of {ZIP_NAME} (train/ and test/ folders "
                        f"of class folders of 32x32 JPEGs)")


def _fingerprint(source: Path) -> tuple[str, int, int]:
    """What identifies a decoded source: the zip's (or folder's) path, size and mtime; a folder
    counts the sizes and latest mtime of its part folders' entries, so an edited copy is re-read."""
    resolved = source.resolve()
    if resolved.is_file():
        st = resolved.stat()
        return str(resolved), st.st_size, st.st_mtime_ns
    stats = [p.stat() for part in PARTS for p in (resolved / part).glob("*/*")]
    return (str(resolved), sum(s.st_size for s in stats) + len(stats),
            max((s.st_mtime_ns for s in stats), default=0))


def load_jpeg_parts(source: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) of the JPEG copy at ``source`` (a zip or an unpacked folder), each uint8
    [N, 3, 32, 32] in sorted-path order and read-only. ``limit`` decodes only the first ``limit``
    images of train followed by test (and is not cached); a whole source is decoded once per
    process."""
    if limit is None:
        try:
            key = _fingerprint(source)
        except OSError as exc:
            raise DataError(f"cannot read {source}: {exc.strerror or one_line(exc)}") from None
        if key not in _DECODED:
            parts = (_read_zip if source.is_file() else _read_folder)(source, None)
            _DECODED[key] = parts["train"], parts["test"]
        return _DECODED[key]
    parts = (_read_zip if source.is_file() else _read_folder)(source, limit)
    return parts["train"], parts["test"]
