"""Which colour data sets the Table-1 reproduction uses, and how each reaches qgen-train.

CIFAR10 and SVHN (32x32) go in as they are. STL10 is 96x96, which the DCGAN generator (square
power-of-two sides) cannot make and qgen-train has no resize option, so its images are resized
once to 64x64 (qgen_infer.data's own antialiased resize) and written as a PNG folder that
qgen-train reads with ``--data folder``. Without any of the three, the embedded 'patches' set
(colour photo patches shipped with scikit-image) stands in, and the tables say so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from paper_repro.plan import ColourSet

PAPER_SETS = ("cifar10", "svhn", "stl10")
STL10_SIDE = 64


def find_roots(data_root: Path | None, explicit: dict[str, Path | None]) -> dict[str, Path]:
    """The root of each paper data set: ``--cifar10``/``--svhn``/``--stl10`` when given, else
    ``DATA_ROOT/<name>`` when that folder exists."""
    roots: dict[str, Path] = {}
    for name in PAPER_SETS:
        if explicit.get(name) is not None:
            roots[name] = Path(explicit[name])  # type: ignore[arg-type]
        elif data_root is not None and (data_root / name).exists():
            roots[name] = data_root / name
    return roots


def stl10_folder(root: Path, dest: Path, out: Callable[[str], None] = print) -> Path:
    """Write STL10's images at 64x64 as PNGs under ``dest`` once (a marker file records that
    the folder is complete, so an interrupted conversion is redone)."""
    done = dest / ".complete"
    if done.is_file():
        return dest
    import numpy as np
    from PIL import Image

    from qgen_infer.data import load_images

    out(f"converting STL10 from {root} to {STL10_SIDE}x{STL10_SIDE} PNGs in {dest} ...")
    x = load_images("stl10", root, image_size=STL10_SIDE)
    dest.mkdir(parents=True, exist_ok=True)
    pixels = ((x.numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    for i, img in enumerate(pixels):
        Image.fromarray(np.transpose(img, (1, 2, 0))).save(dest / f"{i:06d}.png")
    done.write_text(f"{len(pixels)} images from {root}\n")
    return dest


def cifar10_label(root: Path) -> str:
    """"CIFAR10", or "CIFAR10 (JPEG copy)" when ``root`` holds the JPEG copy (its pixels went
    through one lossy JPEG round trip, and results on it say so)."""
    from qgen_infer.data.cifar10 import jpeg_copy_at

    try:
        return "CIFAR10 (JPEG copy)" if jpeg_copy_at(root) is not None else "CIFAR10"
    except Exception:  # a missing root: qgen-train names the problem when the run starts
        return "CIFAR10"


def colour_sets(roots: dict[str, Path], runs: Path, *, convert: bool,
                fallback: str = "patches") -> list[ColourSet]:
    """The sets to run: the paper's three where their files are given, else ``fallback``.
    ``convert`` False (dry run, report only) names the STL10 folder without writing it."""
    sets = []
    if "cifar10" in roots:
        sets.append(ColourSet(cifar10_label(roots["cifar10"]), "cifar10", str(roots["cifar10"])))
    if "svhn" in roots:
        sets.append(ColourSet("SVHN", "svhn", str(roots["svhn"])))
    if "stl10" in roots:
        dest = runs / "data" / f"stl10-{STL10_SIDE}"
        if convert:
            stl10_folder(roots["stl10"], dest)
        sets.append(ColourSet(f"STL10 ({STL10_SIDE}x{STL10_SIDE})", "folder", str(dest)))
    if not sets:
        sets.append(ColourSet(f"{fallback} (embedded)", fallback, None))
    return sets


def describe(cs: ColourSet) -> str:
    """One line for the report's "Data used" list."""
    from qgen_infer.data import dataset_info

    if cs.dataset == "folder":
        return (f"- {cs.label}: STL-10 binary files resized to {STL10_SIDE}x{STL10_SIDE} into "
                f"`{cs.data_root}` (qgen-train --data folder); 10% held out")
    info = dataset_info(cs.dataset)
    where = f" from `{cs.data_root}`" if cs.data_root else ""
    note = "" if cs.dataset in PAPER_SETS else " — NOT one of the paper's data sets"
    return f"- {cs.label}{where}: {info['description']}{note}"
