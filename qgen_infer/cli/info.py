"""``qgen-info``: describe a ``.qgen`` file (bits, layers, bytes, compression, sensing net)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qgen_infer.cli.common import ArgumentParser, run_cli

DESCRIPTION = """\
Read a .qgen file (fully validated: structure, metadata, checksum, tensor shapes and values) and
print its format version, network, quantizer and solver defaults, then one row per generator layer
(kind, weight shape, weights, packed bytes, fp32 per-channel bytes, activation), the total generator
bytes with the compression ratio against fp32, and the size of the fp32 sensing network.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-info", description=DESCRIPTION)
    p.add_input("model", metavar="MODEL.qgen", help="packed model file written by qgen-export")
    return p


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    from qgen_infer.format import read_qgen
    from qgen_infer.format.summary import render

    qf = read_qgen(args.model)
    print(render(qf, Path(args.model).stat().st_size, args.model))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-info", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
