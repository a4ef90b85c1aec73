"""``qgen-export``: quantize a training checkpoint and write the packed ``.qgen`` model file."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from qgen_infer.cli.common import ArgumentParser, run_cli

DESCRIPTION = """\
Quantize every generator weight of a checkpoint (model.pt, written by qgen-train) to K-bit codes
with the same LinearQuantize as training, pack them into the canonical bit stream (docs/FORMAT.md)
and write a .qgen file: a safetensors container with the packed generator (BatchNorm folded into
per-channel alpha/beta beside each layer), the sensing network (fp32, or fp16: see --sensing-dtype),
the solver defaults and the training metadata. At the trained bit width and granularity the exported
weights equal the fake-quantized training weights bit for bit; another width or granularity is
post-training quantization (allowed, with a warning, and recorded in the file).
"""

EPILOG = """\
examples:
  qgen-export runs/mnist/model.pt            # at the trained width K, to runs/mnist/model-wK.qgen
  qgen-export model.pt --bits 2 --granularity channel      # to model-w2.qgen
  qgen-export model.pt --bits 1 --out mnist-1bit.qgen --force   # replace an existing file
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-export", description=DESCRIPTION, epilog=EPILOG)
    p.add_input("model", metavar="MODEL.pt", help="training checkpoint written by qgen-train; "
                "read with torch.load(weights_only=True), no pickle code runs")
    p.add_argument("--bits", type=int, choices=(1, 2, 3, 4), default=None,
                   help="bits per weight (default: the trained width; required when the "
                   "checkpoint was trained at full precision)")
    p.add_argument("--granularity", choices=("tensor", "channel"), default=None,
                   help="one scale per tensor or per output channel (default: as trained)")
    p.add_argument("--sensing-dtype", choices=("auto", "fp32", "fp16"), default="auto",
                   help="how the sensing network's weights are stored (the engine loads them into "
                        "an fp32 network either way): auto = fp16 for a checkpoint trained with "
                        "--precision bf16 (its A ran in bf16 at every step; half the bytes), "
                        "else fp32 (default: auto)")
    p.add_argument("-o", "--out", metavar="FILE.qgen", default=None,
                   help="the packed model file to write (default: MODEL-wK.qgen beside the "
                        "checkpoint, K the bit width)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing output file (it is replaced atomically, only "
                        "after the new one is complete)")
    return p


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    from qgen_infer.checkpoint import load_checkpoint
    from qgen_infer.errors import QgenError
    from qgen_infer.export import ExportWarning
    from qgen_infer.export.exporter import (
        checkpoint_export_bits,
        default_output_path,
        write_export,
    )
    from qgen_infer.format.summary import human_bytes

    src = Path(args.model)
    # the checkpoint and --bits first: a missing --bits is the error to report, not the output
    ckpt = load_checkpoint(src)
    bits = checkpoint_export_bits(ckpt, args.bits)
    out = Path(args.out) if args.out is not None else default_output_path(src, bits)
    if out.is_dir():
        raise QgenError(f"--out {str(out)!r} is a folder; name the .qgen file to write")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise QgenError(f"--out {str(out)!r} is the checkpoint itself; name another file")
    if out.exists() and not args.force:
        raise QgenError(f"{str(out)!r} exists; pass --force to overwrite it")
    with warnings.catch_warnings():
        # reported below as one readable line instead of Python's file:line warning format
        warnings.simplefilter("ignore", ExportWarning)
        result = write_export(ckpt, out, bits, args.granularity, args.sensing_dtype)
    for note in result.warnings:
        print(f"qgen-export: warning: {note}", file=sys.stderr)
    ratio = 4 * result.weight_count / max(result.packed_bytes, 1)
    print(f"wrote {result.path} ({human_bytes(result.file_bytes)}): {result.bits}-bit "
          f"{result.granularity} codes, {result.weight_count:,} generator weights in "
          f"{result.packed_bytes:,} bytes ({ratio:.1f}x smaller than fp32); sensing net "
          f"{result.sensing_dtype}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-export", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
