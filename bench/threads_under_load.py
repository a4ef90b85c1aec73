"""``qgen-reconstruct`` beside a competing busy process: default threads against --threads 1 / 2.

For each model, starts ``python -c 'while True: pass'`` (one busy core), then runs the real CLI
on MNIST's 1,000 evaluation images in rounds, the thread settings interleaved (their order
alternating between rounds), and reports the best and median img/s of each from metrics.json
(solve time, load excluded), with the thread counts the default chose. The competitor is
stopped at the end (by its pid). With ``--no-busy`` the same runs happen with no competitor;
with ``--setsid`` the competitor runs in a session of its own (with autogroup scheduling it then
takes an equal share of the machine, as another user's job would; without it, it shares this
script's autogroup). ``--dcgan-bits B`` times a paper-size DCGAN instead (32x32x3, m = 100,
freshly initialised as in ``time_dcgan_reconstruct.py``) on ``--images`` random measurements.

    python bench/threads_under_load.py --model models/mnist-m25-1bit.qgen \\
        --model models/mnist-m25-4bit.qgen --rounds 3 --out bench/results/threads-under-load.md
    python bench/threads_under_load.py --dcgan-bits 1 --images 256 --batch-size 32 --setsid
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from bench_reconstruct import DEFAULT_DATA, code_version, cpu_model, measurements, write_report

SETTINGS = {"default": [], "--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"]}


@contextlib.contextmanager
def busy_core(enabled: bool, setsid: bool) -> Iterator[None]:
    """One core kept busy by ``python -c 'while True: pass'`` while the block runs (in a session
    of its own with ``setsid``: under autogroup scheduling it then takes an equal share of the
    machine, as another user's job would); stopped by its pid, whatever the block raises."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            start_new_session=setsid) if enabled else None
    try:
        yield
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


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
    p.add_argument("--model", action="append", default=[], metavar="FILE.qgen")
    p.add_argument("--dcgan-bits", type=int, default=None, metavar="B",
                   help="also a paper-size DCGAN at B bits on --images random measurements")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None, help="qgen-reconstruct --batch-size")
    p.add_argument("--setting", action="append", choices=list(SETTINGS), default=None,
                   help="only these thread settings (default: all three)")
    p.add_argument("--setsid", action="store_true",
                   help="the competitor in a session (autogroup) of its own")
    p.add_argument("--backend", default="auto")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-busy", dest="busy", action="store_false",
                   help="no competing process (the same runs on the machine as it is)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.model and args.dcgan_bits is None:
        p.error("give --model or --dcgan-bits")
    if args.setting and args.setting == ["default"] * len(args.setting):
        p.error("--setting: add a fixed count (the ratios are to the best fixed one)")
    extra = [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
    rows = []
    with busy_core(args.busy, args.setsid):
        with tempfile.TemporaryDirectory(prefix="threads-load-") as tmp:
            work = Path(tmp)
            models = [(m, measurements(m, args.data_root, args.images, work / f"y-{i}.npy"))
                      for i, m in enumerate(args.model)]
            if args.dcgan_bits is not None:
                models.append(dcgan_model(work, args.dcgan_bits, args.images))
            for model, y in models:
                names = args.setting or list(SETTINGS)
                ips: dict[str, list[float]] = {name: [] for name in names}
                used: dict[str, set[int]] = {name: set() for name in names}
                for rnd in range(args.rounds):
                    for name in names if rnd % 2 == 0 else names[::-1]:
                        m = run_cli(model, y, work / "rec", SETTINGS[name] + extra, args.backend)
                        ips[name].append(m["timing"]["images_per_second"])
                        used[name].update(m["settings"].get("threads_used") or [])
                best_fixed = max(max(ips[n]) for n in names if n != "default")
                for name in names:
                    rows.append({"model": Path(model).name, "setting": name, "best": max(ips[name]),
                                 "median": statistics.median(ips[name]),
                                 "vs_best_fixed": max(ips[name]) / best_fixed,
                                 "threads_used": sorted(used[name])})
                    print(f"{model} {name:<12} best {max(ips[name]):8.1f} img/s  median "
                          f"{statistics.median(ips[name]):8.1f}  x{rows[-1]['vs_best_fixed']:.2f} "
                          f"of the best fixed  threads {sorted(used[name])}", flush=True)
    cmd = shlex.join(["python", "bench/threads_under_load.py", *(argv or sys.argv[1:])])
    competitor = "`" + ("setsid " if args.setsid else "") + "python -c 'while True: pass'`"
    images = (f"{args.images:,} MNIST evaluation images" if args.model else "")
    if args.dcgan_bits is not None:
        images += (" / " if images else "") + (f"a freshly initialised {args.dcgan_bits}-bit "
                                               f"DCGAN (32x32x3, m = 100) on {args.images:,} "
                                               "random measurements")
    lines = ["# qgen-reconstruct threads " + ("beside a busy process" if args.busy
                                              else "(no competitor started)"), "",
             f"- command: `{cmd}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"host CPU: {cpu_model()} ({os.cpu_count()} vCPUs); code: {code_version()}; "
             f"ISA: {os.environ.get('QGEN_CPU_ISA', 'best supported')}",
             f"- {images}, backend {args.backend}, the model's solver defaults"
             + (f", --batch-size {args.batch_size}" if args.batch_size else "")
             + f"; {args.rounds} rounds, settings interleaved; img/s from metrics.json "
             "(solve only); competitor: " + (competitor if args.busy else "none started"),
             ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| model | threads | best img/s | median img/s | best / best fixed | "
              "threads used |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['setting']} | {r['best']:.1f} | "
                     f"{r['median']:.1f} | {r['vs_best_fixed']:.2f} | "
                     f"{', '.join(map(str, r['threads_used']))} |")
    write_report("\n".join(lines) + "\n", args.out)


def dcgan_model(work: Path, bits: int, images: int) -> tuple[str, Path]:
    """A paper-size DCGAN .qgen (random weights: the time does not depend on training) and
    ``images`` random measurements for it."""
    from time_dcgan_reconstruct import dcgan_file

    y = work / "y-dcgan.npy"
    np.save(y, np.random.default_rng(0).standard_normal((images, 100)).astype(np.float32))
    return str(dcgan_file(work, bits)), y


if __name__ == "__main__":
    main()
