"""End to end on MNIST's 1,000 evaluation images: ``auto`` (and ``cpu``) against the
``reference`` backend, in ONE process with the variants interleaved round by round.

Separate processes on a shared, busy machine drift apart by more than the differences measured
here; in one process, alternating the variants' order every round, a disturbance hits all of
them alike. Per model (shipped ``models/mnist-m25-*bit.qgen``) each backend loads the file, runs
one untimed reconstruction (thread pools, and ``auto``'s cost measurements when its table has
no entry yet), then ``--rounds`` timed ``qgen_infer.reconstruct`` calls on all 1,000 images
(the model's solver defaults, batch 256, seed 0). Reported: best and median img/s, the ratio of
best times against ``reference``, and the mean PSNR of each backend's reconstructions against
the true images (the reference's PSNR must be matched to 0.01 dB).

The ISA tier is what ``QGEN_CPU_ISA`` says (default: the best supported). ``--emulate-avx2``
re-runs the script with torch's own kernels limited to AVX2 too (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``) and ``QGEN_CPU_ISA=avx2``: on an
AVX-512 machine, the fair stand-in for an AVX2-only CPU, where torch fp32 has 8 lanes as well.

    OMP_NUM_THREADS=1 python bench/auto_vs_reference.py --rounds 5 --out bench/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "QGEN_CPU_ISA": "avx2"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None, metavar="FILE.qgen",
                   help="default: models/mnist-m25-{1,2,3,4}bit.qgen")
    p.add_argument("--backends", nargs="+", default=["reference", "auto", "cpu"],
                   help="backend names, run with the default precision auto; NAME@bf16 runs "
                        "that backend with precision bf16 (on the CPU: the sensing net in bf16), "
                        "NAME@fp32 with fp32, NAME@exact with fp32 and QGEN_CPU_INT_TABLES=off "
                        "(the exact fp32 kernels only)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--emulate-avx2", action="store_true",
                   help="torch limited to AVX2 as well (re-executes with the environment set)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the process's CPU time, which on a shared machine leaves out the "
                        "time other processes held the core (one thread: the solve's own time)")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})

    import torch

    import qgen_infer
    from qgen_infer.data import load_images, split_train_eval
    from qgen_infer.metrics import psnr
    from qgen_infer.reconstruction import solver_options

    sys.path.insert(0, str(REPO / "bench"))
    from bench_reconstruct import write_report

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    models = args.model or [str(REPO / "models" / f"mnist-m25-{b}bit.qgen") for b in (1, 2, 3, 4)]
    _, evals = split_train_eval(load_images("mnist", args.data_root), 1000)
    truth = evals[:1000]
    rows: list[dict[str, Any]] = []
    isa = None
    for path in models:
        loaded = {b: _load(qgen_infer, path, b) for b in args.backends}
        with torch.no_grad():
            y = loaded[args.backends[0]].sensing(truth).numpy()
        secs: dict[str, list[float]] = {b: [] for b in args.backends}
        score: dict[str, float] = {}
        ran: dict[str, str] = {}  # the precision each ran ("auto" resolved)
        for b, model in loaded.items():
            opts = solver_options(model, batch_size=256, seed=0)
            rec = qgen_infer.reconstruct(model, y, opts, precision=_precision(b))  # warm-up
            score[b] = float(psnr(truth, torch.from_numpy(rec.x_hat)).mean())
            ran[b] = rec.precision
            isa = getattr(model.backend, "isa", isa)
        for rnd in range(args.rounds):
            for b in args.backends if rnd % 2 == 0 else args.backends[::-1]:
                model = loaded[b]
                opts = solver_options(model, batch_size=256, seed=0)
                t0 = clock()
                qgen_infer.reconstruct(model, y, opts, precision=_precision(b))
                secs[b].append(clock() - t0)
        ref = min(secs["reference"]) if "reference" in secs else None
        bits = loaded[args.backends[0]].bits
        for b in args.backends:
            dense = ""
            backend = loaded[b].backend
            if getattr(backend, "dispatch", None) == "measured":
                choices = backend.dispatch_report()["choices"]
                dense = f"{sum(c['path'] == 'dense' for c in choices)}/{len(choices)}"
            rows.append({"bits": bits, "backend": b, "best": 1000 / min(secs[b]),
                         "median": 1000 / statistics.median(secs[b]),
                         "vs_ref": ref / min(secs[b]) if ref else None, "psnr": score[b],
                         "dense": dense, "precision": ran[b]})
            r = rows[-1]
            print(f"{bits}-bit {b:<9} {ran[b]:<4} best {r['best']:8.1f} img/s  "
                  f"median {r['median']:8.1f}  "
                  f"vs reference x{r['vs_ref'] or float('nan'):.2f}  PSNR {r['psnr']:.4f} dB "
                  f"{'dense ' + dense if dense else ''}", flush=True)
    torch_isa = torch.backends.cpu.get_cpu_capability()
    cmd = shlex.join(["python", "bench/auto_vs_reference.py", *(argv or sys.argv[1:])])
    lines = [f"- command: `{cmd}`" + (" (re-executed with " + " ".join(
                 f"{k}={v}" for k, v in AVX2_ENV.items()) + ")" if args.emulate_avx2 else ""),
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; host "
             f"CPU: {_cpu_model()} ({os.cpu_count()} vCPUs); kernels' ISA tier: {isa}; torch's "
             f"own CPU capability: {torch_isa}; threads: {args.threads}",
             f"- 1,000 MNIST evaluation images, solver defaults of each file, batch 256; "
             f"{args.rounds} rounds in one process, backends interleaved, order alternating; "
             f"clock: {'the process CPU time' if args.clock == 'cpu' else 'wall time'}; load "
             f"average at the end: {os.getloadavg()[0]:.1f}",
             ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| bits | backend | precision ran | best img/s | median img/s | "
              "best vs reference | PSNR dB | products run dense |",
              "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        vs = f"{r['vs_ref']:.2f}x" if r["vs_ref"] else "–"
        lines.append(f"| {r['bits']} | {r['backend']} | {r['precision']} | {r['best']:.1f} | "
                     f"{r['median']:.1f} | {vs} | {r['psnr']:.4f} | {r['dense'] or '–'} |")
    write_report("\n".join(lines) + "\n", args.out)


def _precision(spec: str) -> str:
    """The precision of a ``--backends`` entry: ``NAME@bf16`` -> ``bf16``, ``NAME@fp32`` and
    ``NAME@exact`` -> ``fp32``, a plain name -> ``auto`` (the default of ``reconstruct``)."""
    tag = spec.partition("@")[2]
    return {"bf16": "bf16", "fp32": "fp32", "exact": "fp32"}.get(tag, "auto")


def _load(qgen_infer: Any, path: str, spec: str) -> Any:
    """The model for a ``--backends`` entry; ``NAME@exact``: loaded with the integer tables off
    (the backend reads QGEN_CPU_INT_TABLES when it is made)."""
    name, _, tag = spec.partition("@")
    before = os.environ.get("QGEN_CPU_INT_TABLES")
    if tag == "exact":
        os.environ["QGEN_CPU_INT_TABLES"] = "off"
    try:
        return qgen_infer.load(path, backend=name)
    finally:
        if before is None:
            os.environ.pop("QGEN_CPU_INT_TABLES", None)
        else:
            os.environ["QGEN_CPU_INT_TABLES"] = before


def _cpu_model() -> str:
    from qgen_infer.engine.cpu_dispatch import cpu_model_name

    return cpu_model_name()


if __name__ == "__main__":
    main()
