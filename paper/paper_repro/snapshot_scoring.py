"""Scoring runs that are still training elsewhere (``reproduce_colour.py --snapshots DIR``):
snapshot every run's latest checkpoint into DIR, score the snapshots through the scoring queue
(train nothing), and write each data set's side-by-side report, curves and grids. One broken run
(no checkpoint, a corrupt one, a failed step) is one line on stderr and in the report; the others
are still scored and reported."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from paper_repro import provenance
from paper_repro.colour_data import describe
from paper_repro.commands import paths_for
from paper_repro.execute import QueueOptions, run_queue
from paper_repro.plan import ColourSet, RunSpec, select
from paper_repro.records import collect
from paper_repro.row_report import RowResults, row_report, training_note
from paper_repro.snapshot import SnapshotError, load_info, snapshot_run
from paper_repro.status import busy_folders, eval_curve, run_state

SCORING_NICENESS = 10


def take_snapshots(specs: Sequence[RunSpec], runs: Path, snaps: Path,
                   out: Callable[[str], None] = print) -> dict[str, str]:
    """Snapshot every run that has a checkpoint; returns the failures, {run name: one line}."""
    problems = {}
    for spec in specs:
        try:
            info = snapshot_run(runs / spec.name, snaps / spec.name)
        except SnapshotError as exc:  # said once, with the other failures, at the end
            problems[spec.name] = str(exc)
            out(f"{spec.name}: checkpoint not usable; not scored")
            continue
        if info is None:
            out(f"{spec.name}: no checkpoint in {runs / spec.name} yet")
        else:
            out(f"{spec.name}: snapshot of epoch {info.epochs}/{spec.epochs} "
                f"({info.step:,} steps), copied {info.copied_utc}")
    return problems


def grid_name(key: str, spec: RunSpec) -> str:
    return f"{key}-grid-{spec.bits}bit-{spec.method}{'-control' if spec.control else ''}.png"


def write_row_reports(specs: Sequence[RunSpec], sets: Sequence[ColourSet],
                      args: argparse.Namespace, argv: Sequence[str] | None,
                      problems: dict[str, str], *, draw: bool = True) -> list[Path]:
    """One ``<set>-table1.md`` (and, with ``draw``, its PNGs) per data set of ``specs``, from
    the snapshots."""
    from paper_repro.plots import eval_curves, figure4
    from paper_repro.recon_images import run_images

    snaps: Path = args.snapshots
    args.results.mkdir(parents=True, exist_ok=True)
    argv_list = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    stamp = provenance.stamp(argv_list)
    busy = busy_folders()
    written = []
    for cs in sets:
        row_specs = [s for s in specs if s.label == cs.label]
        if not row_specs:
            continue
        key = cs.label.split()[0].lower()
        records = collect(snaps, row_specs)
        row = RowResults(
            cs.label, row_specs, records,
            {s.name: info for s in row_specs if (info := load_info(snaps / s.name))},
            {s.name: run_state(args.runs / s.name, s.epochs, busy).describe()
             for s in row_specs},
            {s.name: eval_curve(snaps / s.name) for s in row_specs},
            {s.name: eval_curve(snaps / s.name, "eval_ssim") for s in row_specs},
            {n: problems[n] for n in problems if any(s.name == n for s in row_specs)})
        figures: dict[str, str] = {}
        curves = [(s.column, row.curves[s.name], row.ssim_curves[s.name]) for s in row_specs]
        name = f"{key}-eval-curves.png"
        if draw and eval_curves(curves, args.results / name,
                       f"{cs.label}: the training code's eval after each epoch "
                       "(held-out images, 1 start)", max(s.epochs for s in row_specs)):
            figures["Eval PSNR and SSIM after each epoch (log.jsonl)"] = name
        for spec in row_specs:
            rec = records.get(spec.name)
            if rec is None or not draw:
                continue
            images = run_images(spec, paths_for(snaps, spec))
            name = grid_name(key, spec)
            title = (f"{cs.label}, {spec.column} ({training_note(rec)}): originals (top), "
                     "reconstructions; PSNR, SSIM under each")
            if figure4([(spec.column, images)], args.results / name, title):
                figures[f"{spec.column}, {training_note(rec)}"] = name
        runs_note = (f"`{args.runs}` (only read), scored from snapshot copies of their latest "
                     f"checkpoints in `{snaps}`; each run's config.json says how it trained "
                     "(device, threads, precision); the checkpoints do not record the host")
        text = row_report(row, stamp, [describe(cs)], figures, runs_note)
        out = args.results / f"{key}-table1.md"
        provenance.write_keeping_notes(out, text)
        written.append(out)
    return written


def score_snapshots(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    full: Sequence[RunSpec], sets: Sequence[ColourSet],
                    argv: Sequence[str] | None) -> int:
    """The whole --snapshots mode; returns the exit code (1 when any run failed)."""
    specs = select(full, args.only)
    if args.only and not specs:
        parser.error(f"--only {args.only} matches no run of the plan")
    if args.dry_run:
        parser.error("--dry-run and --snapshots: nothing is trained in --snapshots mode; run it "
                     "(or --report-only to rebuild the report from the snapshots)")
    snaps: Path = args.snapshots
    if snaps.resolve() == args.runs.resolve() or args.runs.resolve() in snaps.resolve().parents:
        parser.error("--snapshots must be outside --runs (the run folders are only read)")
    if not args.report_only and not args.runs.is_dir():
        parser.error(f"--runs {args.runs} is not a folder")
    problems: dict[str, str] = {}
    if not args.report_only:
        import torch

        # scoring shares the machine with the training it scores: never above nice 10 (the
        # qgen-* steps inherit it)
        os.nice(max(0, SCORING_NICENESS - os.nice(0)))
        torch.set_num_threads(args.threads)  # the in-process grid images of 32-bit models
        problems = take_snapshots(specs, args.runs, snaps)
        opts = QueueOptions(snaps, threads=args.threads, lanes=args.lanes, backend=args.backend,
                            device=args.device, score_only=True)
        try:
            # after each score the table is rewritten (the figures once, at the end)
            failed = run_queue([s for s in specs if s.name not in problems], opts,
                               on_record=lambda: write_row_reports(specs, sets, args, argv,
                                                                   problems, draw=False))
        except KeyboardInterrupt:
            print("interrupted: run the same command again to score the rest", file=sys.stderr)
            return 130
        for line in failed:
            name, _, why = line.partition(": ")
            problems[name] = why
    for report in write_row_reports(specs, sets, args, argv, problems):
        print(f"report: {report}")
    if args.ship_models is not None:
        from paper_repro.shipping import ship_row

        ship_row(specs, snaps, args.ship_models)
    for name, why in problems.items():
        print(f"failed: {name}: {why}", file=sys.stderr)
    return 1 if problems else 0
