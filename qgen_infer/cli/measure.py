"""``qgen-measure``: apply a model's sensing network A to images, write measurements y.npy."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qgen_infer.cli.common import (
    DATASET_NAMES,
    ArgumentParser,
    check_data_flags,
    float_in,
    int_in,
    run_cli,
)
from qgen_infer.errors import QgenError
from qgen_infer.limits import MAX_COUNT, MAX_NOISE, max_threads

DESCRIPTION = """\
Measure images with the sensing network A stored in a .qgen file: y = A(x) (+ Gaussian noise of
standard deviation --noise-std), written as a float32 array of shape (N, m). The images come from a
.npy array (N, C, H, W) in [-1, 1], a folder of PNG/JPEG files, or a data set's split.
The Python API's qgen_infer.measure(model, x, noise_std, seed) computes the same y.
"""

EPILOG = """\
examples:
  qgen-measure models/mnist-m25-1bit.qgen --data mnist --data-root ../shared/data/mnist \\
      --split eval --count 100 --out y.npy --truth-out x.npy
  qgen-measure model.qgen --images photos/ --noise-std 0.5 --out y.npy
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-measure", description=DESCRIPTION, epilog=EPILOG)
    p.add_input("model", metavar="MODEL.qgen", old_flag="--model",
                help="packed model file written by qgen-export (its sensing network A is used)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="PATH",
                     help="a .npy image array (N, C, H, W) in [-1, 1] or a folder of images")
    src.add_argument("--data", choices=DATASET_NAMES, help="a data set (see qgen-train --help)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder holding the data set's files (not for the embedded digits and "
                        "patches)")
    p.add_argument("--split", choices=("train", "eval", "all"), default="eval",
                   help="which part of the data set (eval: the held-out images, as qgen-eval "
                        "scores them)")
    p.add_argument("--eval-size", type=int_in(1, MAX_COUNT), default=None,
                   help="images held out for evaluation, as in qgen-train (default: the data "
                        "set's; MNIST: the last 1,000)")
    p.add_argument("--count", type=int_in(1, MAX_COUNT), default=None,
                   help="measure only the first COUNT images of the selection (default: all)")
    p.add_argument("--noise-std", type=float_in(0, MAX_NOISE), default=0.0,
                   help="standard deviation sigma of Gaussian noise added to every measurement, "
                        "in the units of y (A's outputs are not normalised: y's own standard "
                        "deviation, printed at the end, is about 5.5 for the shipped 1-bit MNIST "
                        "model)")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of the noise")
    p.add_argument("--threads", type=int_in(1, max_threads()), default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("-o", "--out", metavar="FILE.npy", required=True,
                   help="the measurements y (N, m) to write")
    p.add_argument("--truth-out", metavar="FILE.npy", default=None,
                   help="also write the measured images x (N, C, H, W) in [-1, 1] here (the "
                        "--truth of qgen-reconstruct)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    return p


def _images(args: argparse.Namespace, image_shape: list[int]) -> np.ndarray:
    from qgen_infer.arrays import load_images_npy
    from qgen_infer.data import load_images, load_train_eval

    if args.images is not None and Path(args.images).is_file():
        return load_images_npy(args.images, image_shape)
    if args.images is not None:
        # a folder's files are in sorted order, so --count can stop reading early
        x = load_images("folder", args.images, limit=args.count, image_size=image_shape[1])
    else:
        check_data_flags(args.data, args.data_root)
        x = (load_images(args.data, args.data_root) if args.split == "all" else
             load_train_eval(args.data, args.data_root, args.eval_size)[args.split == "eval"])
    if list(x.shape[1:]) != list(image_shape):
        raise QgenError(f"the images are {list(x.shape[1:])} but the model takes {image_shape}")
    return x.numpy()


def save_all_atomic(paths: list[Path], arrays: list[np.ndarray]) -> None:
    """Write every array to a temporary file first and rename them only when all are written,
    so a failure or a Ctrl-C leaves either all outputs or none (never y without its x)."""
    from qgen_infer.atomic import staged, write_error

    with staged(paths) as tmps:
        for tmp, path, arr in zip(tmps, paths, arrays, strict=True):
            try:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
            except OSError as exc:  # e.g. the disk filled up
                raise write_error(path, exc) from None


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    import torch

    from qgen_infer.engine import load
    from qgen_infer.measurement import measure

    if args.threads is not None:
        if args.threads < 1:
            raise QgenError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.noise_std < 0 or not np.isfinite(args.noise_std):
        raise QgenError("--noise-std must be a non-negative number")
    if args.count is not None and args.count < 1:
        raise QgenError("--count must be at least 1")
    if not 0 <= args.seed < 2**63:  # torch.Generator's seed range
        raise QgenError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    outs = [Path(p) for p in (args.out, args.truth_out) if p]
    if len(outs) == 2 and outs[0].resolve() == outs[1].resolve():
        raise QgenError("--out and --truth-out name the same file")
    for p in outs:
        if p.suffix != ".npy":
            raise QgenError(f"output {str(p)!r} must end in .npy")
        if p.is_dir():
            raise QgenError(f"output {str(p)!r} is a folder; name a .npy file")
        if p.exists() and not args.force:
            raise QgenError(f"{str(p)!r} exists; pass --force to overwrite it")
        if not p.parent.is_dir():
            raise QgenError(f"folder {str(p.parent)!r} does not exist")
    model = load(args.model, backend="reference")
    x = _images(args, model.config["image_shape"])
    if args.count is not None:
        x = x[: args.count]
    y = measure(model, x, noise_std=args.noise_std, seed=args.seed)
    if not bool(torch.isfinite(y).all()):  # a sensing net whose weights overflow float32
        raise QgenError(f"the model's sensing network produced NaN or infinite measurements "
                        f"from {str(args.model)!r}; nothing written")
    arrays = [y.numpy().astype(np.float32)]
    if args.truth_out:
        arrays.append(x.astype(np.float32))
    save_all_atomic(outs, arrays)
    print(f"qgen-measure: {x.shape[0]} images {list(x.shape[1:])} -> {args.out} "
          f"{tuple(y.shape)}, y std {float(y.std(correction=0)):.3g}"
          + (f" (noise std {args.noise_std})" if args.noise_std else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-measure", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
