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
bytes with the compression ratio against fp32, and the size and storage dtype of the sensing
network. Reads the file without importing torch (a fraction of a second); --dispatch adds what
--backend auto chose on this machine for each layer's products (packed kernels or dense fp32, with
both measured times), read from its cost table (~/.cache/qgen-infer/cpu-dispatch.json,
QGEN_CPU_DISPATCH_CACHE), or that nothing was measured yet, and what the default --precision auto
runs the sensing net in here (fp32 or bf16; this loads the engine: ~3 s).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-info", description=DESCRIPTION)
    p.add_input("model", metavar="MODEL.qgen", help="packed model file written by qgen-export")
    p.add_argument("--dispatch", action="store_true",
                   help="also print the --backend auto choices recorded on this machine for "
                        "this file's layers, and the sensing net's precision under "
                        "--precision auto (imports torch)")
    return p


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    from qgen_infer.format import read_qgen
    from qgen_infer.format.summary import render

    qf = read_qgen(args.model, tensors="numpy")  # fully validated, and no torch import
    print(render(qf, Path(args.model).stat().st_size, args.model))
    if args.dispatch:
        print("\n".join(_dispatch_lines(args.model)))
    return 0


def _dispatch_lines(model_path: str) -> list[str]:
    """The cpu dispatcher's recorded choices for this file's layer products, per machine
    context (engine/cpu_dispatch.py): ``auto`` measures them at first use."""
    from qgen_infer.engine import PackedModule, load
    from qgen_infer.engine.cpu_dispatch import CostTable, default_cache_path

    path = default_cache_path()
    table = CostTable(path).entries()
    model = load(model_path, backend="reference")  # for the layers' matrix views [N, K]
    found: dict[str, list[str]] = {}
    for layer in model.generator.modules():
        if not isinstance(layer, PackedModule):
            continue
        n, k = layer.matrix_shape
        for context, products in table.items():
            for product, (packed_s, dense_s) in sorted(products.items()):
                op, bits, shape, *rest = product.split()
                if (bits, shape) == (f"w{layer.bits}", f"{n}x{k}"):
                    path_taken = "packed" if packed_s <= dense_s else "dense"
                    found.setdefault(context, []).append(
                        f"  {layer.name}: {op} {' '.join(rest)} -> {path_taken} (packed "
                        f"{packed_s * 1e3:.3f} ms, dense {dense_s * 1e3:.3f} ms)")
    where = str(path) if path is not None else "off (QGEN_CPU_DISPATCH_CACHE)"
    precision = _auto_precision_line(model_path)
    if not found:
        return [f"cpu dispatch (--backend auto): nothing measured yet for these layers on this "
                f"machine (cost table: {where}); the first reconstruction measures them",
                precision]
    lines = [f"cpu dispatch (--backend auto), from the cost table {where}:"]
    for context, rows in found.items():
        lines += [f" {context}", *rows]
    return [*lines, precision]


def _auto_precision_line(model_path: str) -> str:
    """What ``--precision auto`` (the default) runs the sensing net in, on the CPU here."""
    from qgen_infer.engine import load
    from qgen_infer.reconstruction import resolve_precision

    model = load(model_path, backend="auto", device="cpu")
    ran = resolve_precision(model, "auto")
    why = ("the cpu backend's AVX-512 tier and AMX/AVX512-BF16 here" if ran == "bf16" else
           "needs the cpu backend's AVX-512 tier and AMX/AVX512-BF16")
    return f"precision auto (--backend auto on the CPU): sensing net {ran} ({why})"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-info", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
