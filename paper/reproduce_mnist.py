#!/usr/bin/env python
"""Reproduce Q-GEN's MNIST Figure 3 (PSNR/SSIM vs latent sparsity s, per bit width, m = 25 and
100) and Figure 4 (reconstructions per bit width), scoring every quantized model THROUGH THE
PACKED ENGINE (qgen-export -> qgen-measure -> qgen-reconstruct) and 32-bit ones with qgen-eval.

The grid (SDLSS at 1/2/3/4/32 bits and 32-bit DCS, m in {25, 100}, s sweep) is tens of CPU-hours,
so it is a resumable queue: finished runs are skipped (log.jsonl shows the target epochs),
unfinished ones continue from their per-epoch checkpoint (qgen-train --resume), a folder that
another qgen-train process is writing is left alone. The first runs are exactly those of
paper/train_mnist_m25.sh (runs/mnist-m25-sdlss-{bits}, runs/mnist-m25-dcs-32).

    python paper/reproduce_mnist.py --dry-run                 # the queue, states, commands
    python paper/reproduce_mnist.py --lanes 2                 # run it (Ctrl-C, re-run resumes)
    python paper/reproduce_mnist.py --only 'mnist-m25-*'      # a part of it
    python paper/reproduce_mnist.py --report-only             # tables and plots from what exists
    python paper/reproduce_mnist.py --report-only --ship-models   # also copy .qgen to models/

Writes bench/results/mnist-figure3.md, mnist-figure3.png and mnist-figure4-m{m}.png.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from paper_repro import provenance
from paper_repro.commands import paths_for
from paper_repro.execute import drive
from paper_repro.options import REPO, add_queue_options, check_queue_options, overflow_rates
from paper_repro.plan import BITS, DCS, DEFAULT_SPARSITY, SDLSS, RunSpec, mnist_plan
from paper_repro.plots import figure3, figure4
from paper_repro.recon_images import run_images
from paper_repro.records import collect
from paper_repro.shipping import ship
from paper_repro.status import busy_folders, run_state
from paper_repro.tables import Results, mnist_report

REPORT = "mnist-figure3.md"
EPOCHS = 60  # paper/train_mnist_m25.sh's


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_queue_options(p, epochs=EPOCHS)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mnist"),
                   help="folder with the MNIST IDX files")
    p.add_argument("--data", default="mnist",
                   help="qgen data set (mnist; 'digits' only for smoke tests)")
    p.add_argument("-m", "--measurements", type=int, nargs="+", default=[25, 100])
    p.add_argument("-s", "--sparsities", type=int, nargs="+",
                   default=[10, 25, 50, 75, 100, 200])
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS), choices=BITS)
    p.add_argument("--sweep-bits", type=int, nargs="+", default=[1, 32], choices=BITS,
                   help="bit widths whose s sweep is queued early (the others' come last)")
    p.add_argument("--ship-models", nargs="?", type=Path, const=REPO / "models", default=None,
                   metavar="DIR", help="copy the finished packed s=100 models into DIR")
    return p


def plan(args: argparse.Namespace) -> list[RunSpec]:
    root = None if args.data in ("digits",) else args.data_root
    return mnist_plan(data_root=root, epochs=args.epochs, measurements=args.measurements,
                      sparsities=args.sparsities, bits=args.bits, sweep_bits=args.sweep_bits,
                      dataset=args.data, overflow_rates=overflow_rates(args.overflow_rate))


def write_report(specs: list[RunSpec], args: argparse.Namespace,
                 argv: Sequence[str] | None) -> Path:
    """Tables and figures of everything scored so far (the whole plan, whatever --only ran)."""
    busy = busy_folders()
    states = {s.name: run_state(paths_for(args.runs, s).run_dir, s.epochs, busy).describe()
              for s in specs}
    results = Results(specs, collect(args.runs, specs), states)
    label = specs[0].label if specs else "MNIST"
    args.results.mkdir(parents=True, exist_ok=True)
    figures = []
    if figure3(results, args.results / "mnist-figure3.png", label):
        figures.append("mnist-figure3.png")
    for m in results.measurements():
        rows = []
        for method, b in [(SDLSS, b) for b in BITS] + [(DCS, 32)]:
            spec = next((s for s in specs if (s.method, s.bits, s.m) == (method, b, m)
                         and (method == DCS or s.s == DEFAULT_SPARSITY)), None)
            rec = results.records.get(spec.name) if spec else None
            if spec is not None and rec is not None:
                rows.append((f"{b}-bit {method.upper()}\n({rec.epochs} ep)",
                             run_images(spec, paths_for(args.runs, spec))))
        name = f"mnist-figure4-m{m}.png"
        title = (f"{label}, m = {m}, s = 100: originals and reconstructions "
                 "(1-4 bit: packed engine; 32-bit: fp32 checkpoint); PSNR dB, SSIM under each")
        if figure4(rows, args.results / name, title):
            figures.append(name)
    argv_list = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    text = mnist_report(results, provenance.stamp(argv_list), figures, label)
    out = args.results / REPORT
    provenance.write_keeping_notes(out, text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_queue_options(p, args)
    full = plan(args)
    code, report = drive(p, args, full, lambda: write_report(full, args, argv))
    if report is not None and args.ship_models is not None:
        ship(full, args.runs, args.ship_models)
    return code

if __name__ == "__main__":
    raise SystemExit(main())
