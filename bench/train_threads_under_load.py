"""``qgen-train`` beside a competing busy process: the default threads against --threads 1 / 2.

Starts ``python -c 'while True: pass'`` in a session of its own (``setsid``: with autogroup
scheduling a busy process in another session takes an equal share of the machine, as another
user's job would), then trains on the embedded digits for ``--epochs`` epochs per run, the
settings interleaved (their order alternating between rounds), and reports the steps/s of each
epoch from log.jsonl with the thread counts the steps ran with. The competitor is stopped at
the end (by its pid). With ``--no-busy`` the same runs happen with no competitor.

    python bench/train_threads_under_load.py --rounds 2 --out /tmp/train-threads-busy.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_reconstruct import code_version, cpu_model, write_report
from threads_under_load import SETTINGS, busy_core


def train(out: Path, epochs: int, extra: list[str]) -> list[dict[str, Any]]:
    """One qgen-train run; its per-epoch log records."""
    cmd = [sys.executable, "-m", "qgen_infer.cli.train", "--out-dir", str(out),
           "--epochs", str(epochs), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"qgen-train failed:\n{proc.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-busy", dest="busy", action="store_false",
                   help="no competing process (the same runs on the machine as it is)")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    used: dict[str, set[int]] = {name: set() for name in SETTINGS}
    names = list(SETTINGS)
    with busy_core(args.busy, setsid=True):
        with tempfile.TemporaryDirectory(prefix="train-threads-") as tmp:
            for rnd in range(args.rounds):
                for name in names if rnd % 2 == 0 else names[::-1]:
                    out = Path(tmp) / f"{rnd}-{name.replace(' ', '')}"
                    for rec in train(out, args.epochs, SETTINGS[name]):
                        rates[name].append(rec["steps_per_s"])
                        used[name].update(rec.get("threads", []))
                    print(f"round {rnd} {name:<12} steps/s "
                          f"{[round(r, 1) for r in rates[name][-args.epochs:]]}", flush=True)
    cmd = shlex.join(["python", "bench/train_threads_under_load.py", *(argv or sys.argv[1:])])
    lines = [f"- command: `{cmd}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"host CPU: {cpu_model()} ({os.cpu_count()} vCPUs); code: {code_version()}",
             f"- qgen-train on the embedded digits (1,500 images, batch 64: 23 steps an epoch), "
             f"{args.epochs} epochs a run, {args.rounds} rounds, settings interleaved; steps/s "
             "per epoch from log.jsonl; competitor: " + (
                 "`setsid python -c 'while True: pass'`" if args.busy else "none started")]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| threads | epochs | median steps/s | min | max | median / best fixed's "
              "median | threads used |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    fixed_median = max(statistics.median(rates["--threads 1"]),
                       statistics.median(rates["--threads 2"]))
    for name in names:
        r = rates[name]
        lines.append(f"| {name} | {len(r)} | {statistics.median(r):.1f} | {min(r):.1f} | "
                     f"{max(r):.1f} | {statistics.median(r) / fixed_median:.2f} | "
                     f"{', '.join(map(str, sorted(used[name])))} |")
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
