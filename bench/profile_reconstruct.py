#!/usr/bin/env python
"""Where a reconstruction's time goes: torch.profiler's operator table for one
``qgen_infer.reconstruct`` call (after a warm-up call) on a shipped model.

    python bench/profile_reconstruct.py --bits 1 --backend cpu --threads 1 --steps 20

Measurements are random (the split of time does not depend on the images). On the CPU the
packed products show as ``PackedGemm`` / ``PackedGemmBackward``; the sensing net's as
``aten::addmm`` (forward) and ``aten::mm`` (input gradient).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import qgen_infer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=1)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rows", type=int, default=15, help="operators to list")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = qgen_infer.load(REPO / "models" / f"mnist-m25-{args.bits}bit.qgen",
                            backend=args.backend, device=args.device)
    y = np.random.default_rng(0).normal(size=(args.batch_size, model.config["measurements"]))
    y = y.astype(np.float32)
    kw = dict(steps=args.steps, batch_size=args.batch_size)
    qgen_infer.reconstruct(model, y, **kw)
    t0 = time.perf_counter()
    qgen_infer.reconstruct(model, y, **kw)
    print(f"{args.bits}-bit {args.backend}, {args.threads} thread(s), batch {args.batch_size}, "
          f"T = {args.steps}: {time.perf_counter() - t0:.3f} s unprofiled")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        qgen_infer.reconstruct(model, y, **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                    max_name_column_width=40))


if __name__ == "__main__":
    main()
