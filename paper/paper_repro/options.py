"""Command-line options both reproduction scripts share."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def add_queue_options(p: argparse.ArgumentParser, *, epochs: int) -> None:
    p.add_argument("--runs", type=Path, default=REPO / "runs",
                   help="run folders (RUNS/NAME) and evaluations (RUNS/eval/NAME)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results",
                   help="where the markdown tables and PNG figures go")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs of every run")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="only runs whose name matches this shell pattern (repeatable), e.g. "
                        "'mnist-m25-*'")
    p.add_argument("--dry-run", action="store_true",
                   help="print the queue (state, next action, commands) and exit")
    p.add_argument("--report-only", action="store_true",
                   help="train and score nothing; rebuild tables and plots from what exists")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--lanes", type=int, default=1, help="runs side by side")
    p.add_argument("--backend", choices=("auto", "reference", "cpu", "triton"), default="auto",
                   help="qgen-reconstruct backend for the packed models")
    p.add_argument("--device", default="cpu",
                   help="qgen-train --device: cpu, cuda or auto (the report's command line "
                        "states it)")
    p.add_argument("--eval-partial", action="store_true",
                   help="also score checkpoints short of --epochs (tables mark them)")
    p.add_argument("--score-only", action="store_true",
                   help="train nothing: score every trained checkpoint, finished or not "
                        "(tables mark those short of --epochs), e.g. after a time limit")
    p.add_argument("--overflow-rate", action="append", type=overflow_entry, metavar="BITS=RATE",
                   help="quantizer overflow rate of the BITS-bit SDLSS runs (repeatable; "
                        f"default {DEFAULT_OVERFLOW}: at 2 bits the max|w| range rounds most "
                        "weights to zero; 2=0 queues the max|w| range)")


DEFAULT_OVERFLOW = "2=0.05"


def overflow_entry(text: str) -> tuple[int, float]:
    """``"2=0.05"`` -> (2, 0.05); argparse turns the ValueError into a usage error (exit 2)."""
    bits, sep, rate = text.partition("=")
    try:
        b, r = int(bits), float(rate)
    except ValueError:
        b, r = 0, -1.0
    if not sep or b not in (2, 3, 4) or not 0.0 <= r < 1.0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected BITS=RATE with BITS in 2-4 (1-bit weights are sign x mean|w|, "
            "with no range to clip) and 0 <= RATE < 1")
    return b, r


def overflow_rates(entries: list[tuple[int, float]] | None) -> dict[int, float]:
    """The parsed ``--overflow-rate`` entries as {bits: rate}, the default when none were given."""
    return dict(entries if entries is not None else [overflow_entry(DEFAULT_OVERFLOW)])


def check_queue_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "threads", "lanes"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
