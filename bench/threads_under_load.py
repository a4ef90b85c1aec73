"""``qgen-reconstruct`` beside a competing busy process: default threads against --threads 1 / 2.

For each model, starts ``python -c 'while True: pass'`` (one busy core), then runs the real CLI
on MNIST's 1,000 evaluation images in rounds, the thread settings interleaved (their order
alternating between rounds), and reports the best and median img/s of each from metrics.json
(solve time, load excluded), with the thread counts the default chose. The competitor is
stopped at the end (by its pid). Without ``--busy`` the same runs happen with no competitor.

    python bench/threads_under_load.py --model models/mnist-m25-1bit.qgen \\
        --model models/mnist-m25-4bit.qgen --rounds 3 --out bench/results/threads-under-load.md
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

from bench_reconstruct import DEFAULT_DATA, code_version, cpu_model, measurements, write_report

SETTINGS = {"default": [], "--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"]}


def run_cli(model: str, y: Path, out: Path, extra: list[str], backend: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "qgen_infer.cli.reconstruct", model, str(y),
           "--out-dir", str(out), "--force", "--quiet", "--backend", backend, *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"qgen-reconstruct failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="FILE.qgen")
    p.add_argument("--backend", default="auto")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-busy", dest="busy", action="store_false",
                   help="no competing process (the same runs on the machine as it is)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        with tempfile.TemporaryDirectory(prefix="threads-load-") as tmp:
            work = Path(tmp)
            for mi, model in enumerate(args.model):
                y = measurements(model, args.data_root, 1000, work / f"y-{mi}.npy")
                ips: dict[str, list[float]] = {name: [] for name in SETTINGS}
                used: dict[str, set[int]] = {name: set() for name in SETTINGS}
                names = list(SETTINGS)
                for rnd in range(args.rounds):
                    for name in names if rnd % 2 == 0 else names[::-1]:
                        m = run_cli(model, y, work / "rec", SETTINGS[name], args.backend)
                        ips[name].append(m["timing"]["images_per_second"])
                        used[name].update(m["settings"].get("threads_used") or [])
                best_fixed = max(max(ips["--threads 1"]), max(ips["--threads 2"]))
                for name in names:
                    rows.append({"model": model, "setting": name, "best": max(ips[name]),
                                 "median": statistics.median(ips[name]),
                                 "vs_best_fixed": max(ips[name]) / best_fixed,
                                 "threads_used": sorted(used[name])})
                    print(f"{model} {name:<12} best {max(ips[name]):8.1f} img/s  median "
                          f"{statistics.median(ips[name]):8.1f}  x{rows[-1]['vs_best_fixed']:.2f} "
                          f"of the best fixed  threads {sorted(used[name])}", flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    cmd = shlex.join(["python", "bench/threads_under_load.py", *(argv or sys.argv[1:])])
    lines = ["# qgen-reconstruct threads " + ("beside a busy process" if args.busy
                                              else "(no competitor started)"), "",
             f"- command: `{cmd}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"host CPU: {cpu_model()} ({os.cpu_count()} vCPUs); code: {code_version()}; "
             f"ISA: {os.environ.get('QGEN_CPU_ISA', 'best supported')}",
             f"- 1,000 MNIST evaluation images, backend {args.backend}, the model's solver "
             f"defaults; {args.rounds} rounds, settings interleaved; img/s from metrics.json "
             "(solve only); competitor: " + ("`python -c 'while True: pass'`" if args.busy
                                             else "none started"),
             ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| model | threads | best img/s | median img/s | best / best fixed | "
              "threads used |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {Path(r['model']).name} | {r['setting']} | {r['best']:.1f} | "
                     f"{r['median']:.1f} | {r['vs_best_fixed']:.2f} | "
                     f"{', '.join(map(str, r['threads_used']))} |")
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
