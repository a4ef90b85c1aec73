#!/usr/bin/env python
"""Reproduce Q-GEN's Table 1 (colour images, DCGAN generator): 1/2/3/4/32-bit SDLSS and 32-bit
DCS, PSNR and SSIM, with the generator's packed size against fp32. Quantized models are scored
THROUGH THE PACKED ENGINE (qgen-export -> qgen-measure -> qgen-reconstruct), 32-bit ones with
qgen-eval (a 32-bit model has no packed form).

CIFAR10, SVHN and STL10 are used when their files are given (--data-root DIR with cifar10/,
svhn/, stl10/ inside, or --cifar10/--svhn/--stl10 PATH); otherwise the embedded colour set
'patches' stands in and the table says so. The queue resumes like reproduce_mnist.py does.

    python paper/reproduce_colour.py --dry-run
    python paper/reproduce_colour.py --data-root /data --lanes 2
    python paper/reproduce_colour.py --device cuda --lanes 3      # on a GPU (paper/gpu_colour.sh)
    python paper/reproduce_colour.py --report-only
    python paper/reproduce_colour.py --cifar10 DIR --runs /work/cifar-runs --epochs 12 \
        --precision bf16 --finetune-from 8 --lanes 2   # 1-4 bits fine-tuned from 32-bit ep. 8
    python paper/reproduce_colour.py --cifar10 DIR --runs /work/cifar-runs --epochs 12 \
        --precision bf16 --finetune-from 8 --snapshots runs/snapshots   # score runs in progress

Writes bench/results/colour-table1.md; with --snapshots, RESULTS/<set>-table1.md (e.g.
cifar10-table1.md: the row side by side with the paper's, partial runs marked), the eval-curve
PNG and one reconstruction grid PNG per scored run. --snapshots trains nothing and never writes
into --runs: each run's latest checkpoint is copied into SNAPSHOTS/NAME, checked, and scored
there (qgen-export -> qgen-measure -> qgen-reconstruct; 32-bit by qgen-eval); calling it again
scores only checkpoints that changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from paper_repro import provenance
from paper_repro.colour_data import PAPER_SETS, colour_sets, describe, find_roots
from paper_repro.commands import paths_for
from paper_repro.execute import drive
from paper_repro.options import REPO, add_queue_options, check_queue_options, overflow_rates
from paper_repro.plan import BITS, ColourSet, RunSpec, colour_plan
from paper_repro.records import collect
from paper_repro.snapshot_scoring import score_snapshots
from paper_repro.status import busy_folders, eval_curve, run_state
from paper_repro.tables import Results, colour_report

REPORT = "colour-table1.md"
# A DCGAN epoch on the 2,900 training patches takes about 10 min on one busy CPU thread; 20 keeps
# the embedded-set table to a few CPU-hours per model. Raise it for the paper's data sets.
EPOCHS = 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_queue_options(p, epochs=EPOCHS)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding cifar10/, svhn/ and/or stl10/")
    for name in PAPER_SETS:
        p.add_argument(f"--{name}", type=Path, default=None,
                       help=f"{name.upper()} files (overrides DATA_ROOT/{name})")
    p.add_argument("--fallback", default="patches",
                   help="embedded set used when no paper data set is given ('digits' only for "
                        "smoke tests)")
    # The paper gives neither m nor s for Table 1: m = 100 is the DCGAN network's default in
    # qgen_infer.models, s = 100 qgen-train's SDLSS default.
    p.add_argument("-m", "--measurements", type=int, default=100)
    p.add_argument("-s", "--sparsity", type=int, default=100)
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS), choices=BITS)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of every run, part of the run names (default: "
                        "qgen-train's for the DCGAN networks, 2e-4)")
    p.add_argument("--srec-data-pairs", action=argparse.BooleanOptionalAction, default=None,
                   help="data-data pairs in every run's S-REC loss, forced on or off "
                        "(qgen-train --[no-]srec-data-pairs; run names -dp / -nodp). Default: "
                        "qgen-train's, on for the DCGAN networks")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="qgen-train --precision of every run (run names -bf16; default: "
                        "qgen-train's, fp32). bf16 trains about 2x faster on CPUs with AMX "
                        "(bench/results/cifar10-training-speed.md)")
    p.add_argument("--finetune-from", type=int, default=None, metavar="E",
                   help="train the 1-4-bit SDLSS models as quantization-aware fine-tunings of "
                        "the 32-bit SDLSS run's epoch-E checkpoint (that run keeps it: "
                        "qgen-train --keep-epochs E) for EPOCHS - E epochs each, queued after "
                        "the 32-bit run and DCS; run names end in -ftE. Default: every run from "
                        "scratch")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="Adam rate of the fine-tuning runs (default 1e-4, cosine to a tenth; "
                        "another value is part of their names)")
    p.add_argument("--snapshots", type=Path, default=None, metavar="DIR",
                   help="score copies of the runs' latest checkpoints, made in DIR/NAME, and "
                        "write RESULTS/<set>-table1.md; trains nothing, RUNS is only read, runs "
                        "at nice 10 or lower priority (with --report-only: rebuild that report "
                        "from DIR)")
    p.add_argument("--ship-models", nargs="?", type=Path, const=REPO / "models", default=None,
                   metavar="DIR",
                   help="with --snapshots: copy each FINISHED 1-4-bit SDLSS model's packed file "
                        "to DIR/<set>-<bits>bit.qgen (DIR: models/) and write their scores into "
                        "the marked section of DIR/README.md (unfinished ones are skipped)")
    return p


def data_sets(args: argparse.Namespace, *, convert: bool) -> list[ColourSet]:
    roots = find_roots(args.data_root, {n: getattr(args, n) for n in PAPER_SETS})
    return colour_sets(roots, args.runs, convert=convert, fallback=args.fallback)


def write_report(specs: list[RunSpec], sets: list[ColourSet], args: argparse.Namespace,
                 argv: Sequence[str] | None) -> Path:
    busy = busy_folders()
    states = {s.name: run_state(paths_for(args.runs, s).run_dir, s.epochs, busy).describe()
              for s in specs}
    curves = {s.name: eval_curve(paths_for(args.runs, s).run_dir) for s in specs}
    results = Results(specs, collect(args.runs, specs), states, curves)
    argv_list = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    text = colour_report(results, provenance.stamp(argv_list), [describe(cs) for cs in sets])
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / REPORT
    provenance.write_keeping_notes(out, text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_queue_options(p, args)
    for flag, value in (("--lr", args.lr), ("--finetune-lr", args.finetune_lr)):
        if value is not None and not value > 0:
            p.error(f"{flag} must be positive, got {value}")
    if args.finetune_from is not None and not 0 < args.finetune_from < args.epochs:
        p.error(f"--finetune-from must be an epoch below --epochs ({args.epochs}), got "
                f"{args.finetune_from}")
    convert = not (args.dry_run or args.report_only)
    sets = data_sets(args, convert=convert)
    full = colour_plan(sets, epochs=args.epochs, m=args.measurements, s=args.sparsity,
                       bits=args.bits, overflow_rates=overflow_rates(args.overflow_rate),
                       lr=args.lr, srec_data_pairs=args.srec_data_pairs,
                       precision=args.precision, finetune_from=args.finetune_from,
                       finetune_lr=args.finetune_lr)
    if args.snapshots is not None:
        return score_snapshots(p, args, full, sets, argv)
    if args.ship_models is not None:
        p.error("--ship-models needs --snapshots (the scores it writes come from there)")
    code, _ = drive(p, args, full, lambda: write_report(full, sets, args, argv),
                    header=["data: " + "; ".join(cs.label for cs in sets)])
    return code

if __name__ == "__main__":
    raise SystemExit(main())
