#!/usr/bin/env python
"""One DCGAN solver step ``z -> G -> A -> loss -> grad z`` (or, with ``--generator-only``, G's
forward and input gradient), dense fp32 baseline against ``--backend auto``, interleaved in one
process: the median and fastest of ``--rounds`` calls each, in the calling thread's CPU time,
and the minor page faults per call (fresh pages of large tensors, ~2 us a page on this VM: near
zero since ``qgen_infer.load`` keeps freed blocks in the process; ``QGEN_KEEP_FREED_MEMORY=0``
brings back glibc's default, which hands blocks over its mmap threshold back to the kernel).
Finer than ``time_dcgan_reconstruct.py`` on a busy machine: the median of many short calls.

    QGEN_CPU_ISA=portable OMP_NUM_THREADS=1 python bench/time_dcgan_step.py --bits 1
    PYTHONPATH=/path/to/other/checkout python bench/time_dcgan_step.py ...   # A/B

The model is ``time_dcgan_reconstruct.py``'s (paper-size DCGAN, initialised networks); ``fp32``
the same file's weights as dense torch layers (``qgen_infer/engine/dense_baseline.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from time_dcgan_reconstruct import dcgan_file

import qgen_infer
from qgen_infer.engine.dense_baseline import dense_generator


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=1)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--generator-only", action="store_true",
                   help="G's forward and input gradient of sum(x^2), without the sensing net")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        auto = qgen_infer.load(dcgan_file(Path(tmp), args.bits), backend="auto")
    models = {"fp32": dataclasses.replace(auto, generator=dense_generator(auto)), "auto": auto}
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.images, auto.config["latent_dim"], generator=gen)
    y = torch.randn(args.images, auto.config["measurements"], generator=gen)

    def step(model: qgen_infer.QgenModel) -> torch.Tensor:
        zz = z.clone().requires_grad_(True)
        x = model.generator(zz)
        loss = x.square().sum() if args.generator_only else (model.sensing(x) - y).square().sum()
        return torch.autograd.grad(loss, zz)[0]

    for model in (*models.values(), *models.values()):  # warm-up: dispatch choices, primitives
        step(model)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    faults: dict[str, list[int]] = {name: [] for name in models}
    for r in range(args.rounds):  # alternating order: a busy spell hits both alike
        for name in models if r % 2 == 0 else list(models)[::-1]:
            f0, t0 = minor_faults(), time.thread_time()
            step(models[name])
            seconds[name].append(time.thread_time() - t0)
            faults[name].append(minor_faults() - f0)
    what = "G forward + input gradient" if args.generator_only else "step z -> G -> A -> grad z"
    print(f"{args.bits}-bit DCGAN {what}, batch {args.images}, 1 thread, {args.rounds} rounds, "
          f"auto: {auto.backend!r}")
    base = statistics.median(seconds["fp32"])
    for name in models:
        med = statistics.median(seconds[name])
        print(f"{name}: median {med * 1e3:.1f} ms, fastest {min(seconds[name]) * 1e3:.1f} ms, "
              f"{statistics.median(faults[name]):.0f} minor faults per call, "
              f"{base / med:.3f}x fp32 (medians)")


if __name__ == "__main__":
    main()
