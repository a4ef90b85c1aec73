"""Throughput of ``qgen-reconstruct`` on 1 against 2 torchrun processes, interleaved.

Runs ``torchrun --standalone --nproc_per_node=P qgen-reconstruct ...`` for P = 1 and P = 2 in
alternation, ``--repeats`` times, one thread per process, and prints a markdown table: the
sharded phase's wall time (``metrics.json`` ``distributed.wall_seconds``: plan, input check,
solve, merge; not the interpreters' start or the rendezvous), the whole command's wall time,
and each pair's ratio, with the load average before each run (the machine may be shared), and
each rank's CPU time in its shards (on a busy machine the share of the cores each process
gets varies; the CPU time shows how evenly the work itself split).

    python bench/distributed_throughput.py --model models/mnist-m25-1bit.qgen \\
        --measurements y.npy --repeats 3 -- --restarts 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(nproc: int, model: str, measurements: str, extra: list[str], work: Path
             ) -> dict[str, float]:
    out = work / f"out-{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    script = str(Path(sys.executable).with_name("qgen-reconstruct"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", script, model, measurements, "--out-dir", str(out),
           "--threads", "1", "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{nproc} processes failed:\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["distributed"]
    return {"images": metrics["summary"]["images"], "load": load, "total": total,
            "sharded": d["wall_seconds"], "cpu": d["rank_solve_cpu_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--measurements", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("extra", nargs="*", help="more qgen-reconstruct options, after --")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qgen-dist-bench-"))
    rows, ratios, ratios_total, ratios_cpu = [], [], [], []
    try:
        for rep in range(1, args.repeats + 1):
            one = run_once(1, args.model, args.measurements, args.extra, work)
            two = run_once(2, args.model, args.measurements, args.extra, work)
            ratios.append(one["sharded"] / two["sharded"])
            ratios_total.append(one["total"] / two["total"])
            ratios_cpu.append(sum(one["cpu"]) / max(two["cpu"]))
            for nproc, r in ((1, one), (2, two)):
                cpu = " + ".join(f"{c:.2f}" for c in r["cpu"])
                rows.append(f"| {rep} | {nproc} | {r['load']:.1f} | {r['sharded']:.2f} | "
                            f"{r['images'] / r['sharded']:.0f} | {cpu} | {r['total']:.2f} |")
            rows[-1] += f" {ratios[-1]:.2f}x ({ratios_total[-1]:.2f}x) |"
            rows[-2] += " |"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| pair | processes | load avg before | sharded phase s | img/s | solve CPU s per "
          "rank | command s | speed-up, phase (command) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"\nspeed-up of the sharded phase: median {statistics.median(ratios):.2f}x, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}x; whole command: median "
          f"{statistics.median(ratios_total):.2f}x; 1-process solve CPU time over the 2-process "
          f"run's busiest rank: median {statistics.median(ratios_cpu):.2f}x (what the solve "
          f"would gain on two otherwise idle cores)")


if __name__ == "__main__":
    main()
