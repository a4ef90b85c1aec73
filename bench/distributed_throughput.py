"""Throughput of ``qgen-reconstruct`` on 1 against 2 torchrun processes, interleaved.

Runs ``torchrun --standalone --nproc_per_node=P qgen-reconstruct ...`` for P = 1 and P = 2 in
alternation, ``--repeats`` times, one thread per process, and prints a markdown table: the
sharded phase's wall time (``metrics.json`` ``distributed.wall_seconds``: plan, input check,
solve, merge; not the interpreters' start or the rendezvous), the whole command's wall time,
and each pair's ratio, with the load average before each run (the machine may be shared), and
each rank's CPU time in its shards (on a busy machine the share of the cores each process
gets varies; the CPU time shows how evenly the work itself split). A second table splits each
run's wall time by phase from the ranks' timelines (``distributed.rank_timeline``), to show
where the time that does not scale goes.

Without ``--measurements`` it measures ``--images`` MNIST images with the model first
(``qgen-measure``, into a temporary folder). The defaults took 2.6 minutes on the 2-vCPU
machine at load average 7 (about half that on idle cores, estimated):

    OMP_NUM_THREADS=1 python bench/distributed_throughput.py
    python bench/distributed_throughput.py --model M.qgen --measurements y.npy -- --restarts 2
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

DEFAULT_SOLVER = ["--restarts", "8"]


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def make_measurements(model: str, data_root: str, images: int, work: Path) -> str:
    out = work / "y.npy"
    subprocess.run([_script("qgen-measure"), model, "--data", "mnist", "--data-root", data_root,
                    "--split", "all", "--count", str(images), "--out", str(out)], check=True,
                   capture_output=True, text=True)
    return str(out)


def phases(metrics: dict, t_start: float, t_end: float) -> dict[str, float]:
    """Wall seconds per phase of a run, from the ranks' timelines: start-up (command start to
    the last rank's model loaded), solve (to the last rank's shards), the spread of the ranks'
    solve ends, rank 0's merge, and writing the outputs plus leaving (to the command's end)."""
    timelines = [dict(t) for t in metrics["distributed"]["rank_timeline"]]
    loaded = max(t["model loaded"] for t in timelines)
    solved = [t["shards solved"] for t in timelines]
    merged = timelines[0]["merged"]
    return {"start-up": loaded - t_start, "solve": max(solved) - loaded,
            "spread": max(solved) - min(solved), "merge": merged - max(solved),
            "outputs": t_end - merged}


def run_once(nproc: int, model: str, measurements: str, extra: list[str], work: Path
             ) -> dict:
    out = work / f"out-{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", _script("qgen-reconstruct"), model, measurements,
           "--out-dir", str(out), "--threads", "1", "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    t0, wall0 = time.perf_counter(), time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total, wall1 = time.perf_counter() - t0, time.time()
    if done.returncode != 0:
        raise SystemExit(f"{nproc} processes failed:\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["distributed"]
    return {"images": metrics["summary"]["images"], "load": load, "total": total,
            "sharded": d["wall_seconds"], "cpu": d["rank_solve_cpu_seconds"],
            "phases": phases(metrics, wall0, wall1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/mnist-m25-1bit.qgen")
    p.add_argument("--measurements", help="a .npy of measurements (default: made, see above)")
    p.add_argument("--images", type=int, default=8192,
                   help="MNIST images to measure when --measurements is not given")
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("extra", nargs="*",
                   help=f"more qgen-reconstruct options, after -- (default: {DEFAULT_SOLVER})")
    args = p.parse_args()
    extra = args.extra or DEFAULT_SOLVER
    work = Path(tempfile.mkdtemp(prefix="qgen-dist-bench-"))
    rows, phase_rows = [], []
    ratios, ratios_total, ratios_cpu, cpu_added = [], [], [], []
    try:
        y = args.measurements or make_measurements(args.model, args.data_root, args.images,
                                                   work)
        for rep in range(1, args.repeats + 1):
            one = run_once(1, args.model, y, extra, work)
            two = run_once(2, args.model, y, extra, work)
            ratios.append(one["sharded"] / two["sharded"])
            ratios_total.append(one["total"] / two["total"])
            ratios_cpu.append(sum(one["cpu"]) / max(two["cpu"]))
            cpu_added.append(sum(two["cpu"]) / sum(one["cpu"]))
            for nproc, r in ((1, one), (2, two)):
                cpu = " + ".join(f"{c:.2f}" for c in r["cpu"])
                rows.append(f"| {rep} | {nproc} | {r['load']:.1f} | {r['sharded']:.2f} | "
                            f"{r['images'] / r['sharded']:.0f} | {cpu} | {r['total']:.2f} |")
                ph = r["phases"]
                phase_rows.append(f"| {rep} | {nproc} | {ph['start-up']:.2f} | {ph['solve']:.2f} "
                                  f"| {ph['spread']:.2f} | {ph['merge']:.2f} | "
                                  f"{ph['outputs']:.2f} | {r['total']:.2f} |")
            rows[-1] += f" {ratios[-1]:.2f}x ({ratios_total[-1]:.2f}x) |"
            rows[-2] += " |"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{' '.join(extra)}; {os.cpu_count()} CPUs; load average now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| pair | processes | load avg before | sharded phase s | img/s | solve CPU s per "
          "rank | command s | speed-up, phase (command) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"\nspeed-up of the sharded phase: median {statistics.median(ratios):.2f}x, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}x; whole command: median "
          f"{statistics.median(ratios_total):.2f}x; 1-process solve CPU time over the 2-process "
          f"run's busiest rank: median {statistics.median(ratios_cpu):.2f}x (what the solve "
          f"would gain on two otherwise idle cores); CPU time of the 2 ranks together over 1 "
          f"process's: median {statistics.median(cpu_added):.3f}x (work added by running two)\n")
    print("Wall seconds by phase (start-up: command start to the last rank's model loaded; "
          "solve: to the last rank's last shard; spread: first to last rank done; merge: rank "
          "0's; outputs: writing them and leaving):\n")
    print("| pair | processes | start-up | solve | spread | merge | outputs | command |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(phase_rows))


if __name__ == "__main__":
    main()
