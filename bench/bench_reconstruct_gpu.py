#!/usr/bin/env python
"""Reconstruction throughput on a CUDA GPU: the packed Triton generator inside latent proximal GD
against dense torch — same model, same solver settings, same measurements, one run.

Variants (``--variants``; each on the shipped MNIST models, ``models/mnist-m25-{k}bit.qgen``):

* ``torch-fp32`` / ``torch-fp16``: the file's weights dequantized once into dense ``nn.Linear``
  layers (alpha folded into the weight, beta the bias) in fp32 / fp16, the sensing net likewise;
* ``packed``: the Triton backend on fp32 activations (what ``qgen-reconstruct`` runs);
* ``packed-fp16``: the packed generator on fp16 activations and the sensing net in fp16, i.e.
  the dense fp16 baseline with only the generator's products swapped for the packed kernels;
* ``+graph``: every solver step replayed from a CUDA graph (``qgen-reconstruct``'s default on a
  GPU, and the strongest baseline).
* ``packed-fused`` / ``packed-fused-fp16``: every step one Triton kernel
  (``reconstruct(..., fused_step=True)``, ``qgen_infer.engine.fused_step``), fp32 or fp16
  products (activations, latent and update fp32 either way), 16 rows per program on
  ``tl.dot``; ``packed-fused-r4``: 4 rows per program on FMA (4x the programs).

Measurements are ``y = A(G(z))`` for random sparse latents, with ``x = G(z)`` (reference
backend, fp32) as the truth for the PSNR column: the GPU machine has no MNIST files, throughput
does not depend on the images, and the PSNR of one variant against another shows what its
precision costs. Time: wall clock of ``qgen_infer.reconstruct`` on ``--images`` measurements
with ``torch.cuda.synchronize()`` around it, after one warm-up run (compilation and graph
capture excluded; ``first_s`` is the warm-up's wall time, compilation included).

    python bench/bench_reconstruct_gpu.py --out OUTDIR/reconstruct-gpu.md [--jsonl rows.jsonl]
    python bench/bench_reconstruct_gpu.py --bits 1 --save-measurements DIR   # y.npy, x.npy
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import qgen_infer
from qgen_infer.engine.dense_baseline import dense_generator
from qgen_infer.metrics import psnr
from qgen_infer.reconstruction import reconstruct
from qgen_infer.solve import sample_latent

REPO = Path(__file__).resolve().parents[1]
# name -> (generator, precision, CUDA graph, fused step)
VARIANTS = {
    "torch-fp32": ("dense", "fp32", False, False),
    "torch-fp32+graph": ("dense", "fp32", True, False),
    "torch-fp16": ("dense", "fp16", False, False),
    "torch-fp16+graph": ("dense", "fp16", True, False),
    "packed": ("packed", "fp32", False, False), "packed+graph": ("packed", "fp32", True, False),
    "packed-fp16": ("packed", "fp16", False, False),
    "packed-fp16+graph": ("packed", "fp16", True, False),
    "packed-fused": ("packed", "fp32", False, True),
    "packed-fused+graph": ("packed", "fp32", True, True),
    "packed-fused-fp16+graph": ("packed", "fp16", True, True),
    "packed-fused-r4+graph": ("packed", "fp32", True, 4),  # 4 rows per program, FMA
}
TRUTH_SEED = 20261204
SUITE_VARIANTS = ["torch-fp32+graph", "torch-fp16+graph", "packed+graph", "packed-fp16+graph",
                  "packed-fused+graph", "packed-fused-fp16+graph", "packed-fused-r4+graph"]


def dense(model: Any, dtype: torch.dtype) -> Any:
    """The model with its generator as dense torch layers in ``dtype``; ``precision="fp16"``
    casts the activations and runs the sensing net in fp16."""
    out = copy.copy(model)  # reconstruct() reads generator, sensing, config, solver, device
    out.generator = dense_generator(model, dtype)
    return out


def timed(model: Any, y: np.ndarray, truth: torch.Tensor, steps: int, graph: bool, batch: int,
          precision: str, fused: bool | int = False) -> dict[str, float]:
    kw = dict(steps=steps, batch_size=batch, cuda_graph=graph, precision=precision,
              fused_step=fused)
    cuda = model.device.type == "cuda"
    t0 = time.perf_counter()
    reconstruct(model, y, **kw)  # warm-up: compilation, graph capture
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = reconstruct(model, y, **kw)
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"img_s": len(y) / sec, "seconds": sec, "first_s": first,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
            "loss": float(np.mean(rec.loss)),
            "psnr": float(psnr(truth, torch.from_numpy(rec.x_hat)).mean())}


def profile_tables(bits: int, y: np.ndarray, models: dict[str, Any], args) -> str:
    """torch.profiler's per-kernel table (device time) for one eager batch of each model."""
    from torch.profiler import ProfilerActivity, profile

    out = [f"# Per-kernel device time, {bits}-bit, one eager batch of {args.batch_size}, T = 3", ""]
    for name, model in models.items():
        kw = dict(steps=3, batch_size=args.batch_size, cuda_graph=False,
                  precision="fp16" if model.device.type == "cuda" else "fp32")
        reconstruct(model, y[:args.batch_size], **kw)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            reconstruct(model, y[:args.batch_size], **kw)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25,
                                          max_name_column_width=70)
        out += [f"## {name}", "", "```", table, "```", ""]
    return "\n".join(out)


def problem(path: Path, images: int, dev: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    """``(y, x)``: measurements of ``images`` random sparse latents through the file's networks
    (reference backend, fp32) and the images ``x = G(z)`` they come from (CPU)."""
    ref = qgen_infer.load(path, backend="reference", device=dev)
    # seeded apart from the solver's starts (seed 0), which would otherwise start at the truth
    z = sample_latent(images, ref.config["latent_dim"], ref.solver.get("sparsity"),
                      generator=torch.Generator().manual_seed(TRUTH_SEED), device=dev)
    with torch.no_grad():
        x = ref.generator(z)
        return ref.sensing(x).cpu().numpy(), x.cpu()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="markdown file to write")
    p.add_argument("--jsonl", type=Path, default=None, help="also append each row here")
    p.add_argument("--models", type=Path, default=REPO / "models",
                   help="folder of mnist-m25-{bits}bit.qgen files")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=SUITE_VARIANTS)
    p.add_argument("--save-measurements", type=Path, default=None, metavar="DIR",
                   help="only write DIR/y.npy and DIR/x.npy for the first --bits (the input of "
                        "a qgen-reconstruct run) and stop")
    p.add_argument("--bits", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--steps", type=int, nargs="+", default=[3, 20])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--profile", type=Path, default=None,
                   help="also write a per-kernel profile of one eager batch (T=3) of the first "
                        "bits' torch-fp16 and packed-fp16 variants to this file")
    p.add_argument("--device", default="cuda",
                   help="'cpu' only smoke-tests this script (TRITON_INTERPRET=1, no graphs)")
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_reconstruct_gpu.py needs a CUDA device")
    if args.save_measurements is not None:
        y, x = problem(args.models / f"mnist-m25-{args.bits[0]}bit.qgen", args.images, dev)
        args.save_measurements.mkdir(parents=True, exist_ok=True)
        np.save(args.save_measurements / "y.npy", y.astype(np.float32))
        np.save(args.save_measurements / "x.npy", x.numpy().astype(np.float32))
        print(f"wrote {args.save_measurements}/y.npy and x.npy ({args.images} images)")
        return 0
    if args.out is None:
        p.error("--out is required (unless --save-measurements)")
    rows = []
    for bits in args.bits:
        path = args.models / f"mnist-m25-{bits}bit.qgen"
        y, truth = problem(path, args.images, dev)
        ref = qgen_infer.load(path, backend="reference", device=dev)
        half = torch.float16 if dev.type == "cuda" else torch.float32
        models = {("dense", "fp32"): dense(ref, torch.float32), ("dense", "fp16"): dense(ref, half),
                  ("packed", "fp32"): qgen_infer.load(path, backend="triton", device=dev)}
        models[("packed", "fp16")] = models[("packed", "fp32")]
        for steps in args.steps:
            for variant in args.variants:
                kind, precision, graph, fused = VARIANTS[variant]
                if dev.type != "cuda" and (graph or precision != "fp32"):
                    continue  # CPU smoke test: no graphs, no half precision
                r = timed(models[(kind, precision)], y, truth, steps, graph, args.batch_size,
                          precision, fused)
                rows.append((bits, steps, variant, r))
                print(bits, steps, variant, f"{r['img_s']:.0f} img/s, first call "
                      f"{r['first_s']:.1f} s, PSNR {r['psnr']:.2f} dB", flush=True)
                if args.jsonl is not None:
                    with args.jsonl.open("a") as f:
                        f.write(json.dumps({"bits": bits, "steps": steps, "variant": variant,
                                            "images": args.images,
                                            "batch": args.batch_size, **r}) + "\n")
            write_report(args, dev, rows)
        if args.profile is not None and bits == args.bits[0] and dev.type == "cuda":
            prof = {"torch-fp16": models[("dense", "fp16")], "packed-fp16": models[("packed",
                                                                                    "fp32")]}
            args.profile.write_text(profile_tables(bits, y, prof, args))
            print(f"wrote {args.profile}", flush=True)
    print(f"wrote {args.out}")
    return 0


def write_report(args, dev: torch.device, rows: list) -> None:
    """The markdown table of every row so far (rewritten after each group: a run cut short
    keeps what it measured)."""
    best_fp16 = {}
    for b, t, v, r in rows:
        if v.startswith("torch-fp16"):
            best_fp16[(b, t)] = max(best_fp16.get((b, t), 0.0), r["img_s"])
    lines = [
        "# Reconstruction throughput on the GPU: packed Triton vs dense torch",
        "",
        f"- command: `python bench/bench_reconstruct_gpu.py --bits {' '.join(map(str, args.bits))}"
        f" --steps {' '.join(map(str, args.steps))} --variants {' '.join(args.variants)}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: "
        f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}",
        f"- {args.images} measurements y = A(G(z)) of random sparse z, batch {args.batch_size}, "
        "restarts 1; one timed run after a warm-up (first call: the warm-up's wall time, "
        "compilation and capture included); PSNR against x = G(z) (fp32 reference)",
        "- models: the shipped `models/mnist-m25-{k}bit.qgen` (MLP 784-500-500-784, m = 25)",
        "- vs fp16: img/s over the faster torch fp16 variant of the same bits and T",
        "",
        "| bits | T | variant | img/s | vs fp16 | first call s | peak MiB | PSNR dB | mean loss |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bits, steps, variant, r in rows:
        base = best_fp16.get((bits, steps))
        ratio = f"{r['img_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {bits} | {steps} | {variant} | {r['img_s']:.0f} | {ratio} | "
                     f"{r['first_s']:.1f} | {r['peak_mib']:.0f} | {r['psnr']:.2f} | "
                     f"{r['loss']:.4g} |")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
