#!/usr/bin/env python
"""Wall time of ``qgen_infer.reconstruct`` with a paper-size DCGAN generator (32x32x3, width 64,
m = 100), on the CPU or, with ``--device cuda``, a GPU (CUDA-graph replay, as
``qgen-reconstruct`` does there): a model exported from freshly initialised networks (timing
does not depend on training), random measurements, per backend and against the same generator
as dense torch fp32 layers (``fp32``: ``qgen_infer/engine/dense_baseline.py``, through the same
``qgen_infer.reconstruct``). Also for comparing code versions on one machine:

    python bench/time_dcgan_reconstruct.py --bits 1 --backends fp32 cpu reference
    python bench/time_dcgan_reconstruct.py --device cuda --backends fp32 triton --images 256
    PYTHONPATH=/path/to/other/checkout python bench/time_dcgan_reconstruct.py ...   # A/B

Prints the fastest of ``--repeats`` timed calls after a one-step warm-up; the backends' calls
are interleaved (order alternating), so each ratio to fp32 comes from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import qgen_infer
from qgen_infer.checkpoint import save_checkpoint
from qgen_infer.engine.dense_baseline import dense_generator
from qgen_infer.errors import QgenError
from qgen_infer.export import export_checkpoint
from qgen_infer.models import build_generator, build_sensing
from qgen_infer.models.networks import DCGAN_DEFAULTS


def dcgan_file(folder: Path, bits: int) -> Path:
    torch.manual_seed(0)
    config = {**DCGAN_DEFAULTS, "bits": bits}
    gen, sense = build_generator(config), build_sensing(config)
    ckpt = {"config": config, "generator": gen.state_dict(), "sensing": sense.state_dict(),
            "solver": {"method": "sdlss", "sparsity": 100, "steps": 3, "project": True,
                       "step_size": 0.05},
            "log_step_size": torch.tensor(-3.0), "train": {"epochs": 0, "step": 0, "seed": 0}}
    path = folder / "model.pt"
    save_checkpoint(path, ckpt)
    return export_checkpoint(path, folder / f"dcgan-{bits}bit.qgen").path


BACKENDS = ("fp32", "cpu", "auto", "reference", "triton")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=1)
    p.add_argument("--backends", nargs="+", default=["fp32", "cpu", "reference"],
                   help="fp32 (the dense baseline), cpu, auto, reference, triton; NAME@PRECISION "
                        "runs a backend at that precision (e.g. cpu@fp32: exact, where the "
                        "default auto may run the sensing net in bf16)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="thread: the calling thread's CPU time (1 thread on a busy machine)")
    args = p.parse_args()
    for name in args.backends:
        backend, _, precision = name.partition("@")
        if backend not in BACKENDS or precision not in ("", "auto", "fp32", "bf16", "fp16"):
            p.error(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}[@precision]")
    torch.set_num_threads(args.threads)
    y = np.random.default_rng(0).normal(size=(args.images, DCGAN_DEFAULTS["measurements"]))
    y = y.astype(np.float32)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        path = dcgan_file(Path(tmp), args.bits)
        models = {}
        precision = {name: name.partition("@")[2] or "auto" for name in args.backends}
        for name in args.backends:
            backend = name.partition("@")[0]
            try:
                model = qgen_infer.load(path, device=args.device,
                                        backend="reference" if backend == "fp32" else backend)
            except QgenError as e:
                raise SystemExit(f"time_dcgan_reconstruct: {e}") from None
            if backend == "fp32":
                model = dataclasses.replace(model, generator=dense_generator(model))
            qgen_infer.reconstruct(model, y, steps=1, batch_size=args.images,
                                   precision=precision[name])  # warm-up
            models[name] = model
        # rounds interleave the backends, order alternating: a busy machine's slow spells
        # then hit every backend alike
        best = dict.fromkeys(args.backends, float("inf"))
        for r in range(args.repeats):
            for backend in args.backends if r % 2 == 0 else args.backends[::-1]:
                t0 = clock()
                qgen_infer.reconstruct(models[backend], y, steps=args.steps,
                                       batch_size=args.images,
                                       precision=precision[backend])  # numpy: synchronised
                best[backend] = min(best[backend], clock() - t0)
        where = args.device if args.device != "cpu" else f"{args.threads} thread(s)"
        for backend, seconds in best.items():
            print(f"{args.bits}-bit DCGAN, {backend}, {args.images} images, T = {args.steps}, "
                  f"{where}: {seconds:.3f} s ({args.images / seconds:.1f} img/s"
                  + (f", {best['fp32'] / seconds:.2f}x fp32" if "fp32" in best else "") + ")")

if __name__ == "__main__":
    main()
