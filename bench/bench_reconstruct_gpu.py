#!/usr/bin/env python
"""Reconstruction throughput on a CUDA GPU: the packed Triton generator inside latent proximal GD
against dense torch fp16 — same model, same solver settings, same measurements, one run.

Variants (each on the shipped MNIST models, ``models/mnist-m25-{k}bit.qgen``):

* ``torch-fp16``: the file's weights dequantized once into dense fp16 ``nn.Linear`` layers (alpha
  folded into the weight, beta the bias), the sensing net in fp16, eager solver loop;
* ``torch-fp16+graph``: the same, every step replayed from a CUDA graph (the strongest baseline);
* ``packed``: the Triton backend (fp32 activations, as ``qgen-reconstruct`` runs it), eager;
* ``packed+graph``: the same with CUDA-graph replay (``qgen-reconstruct``'s default on a GPU);
* ``packed-fp16`` / ``packed-fp16+graph``: the packed generator on fp16 activations and the
  sensing net in fp16, i.e. the dense fp16 baseline with only the generator's products swapped
  for the packed kernels (the like-for-like comparison).

Measurements are ``y = A(G(z))`` for random sparse latents (the GPU machine has no MNIST files;
throughput does not depend on the images). Time: wall clock of ``qgen_infer.reconstruct`` on
1,000 measurements with ``torch.cuda.synchronize()`` around it, after one warm-up run (Triton
compilation and graph capture excluded). Peak: ``torch.cuda.max_memory_allocated`` of the run.

    python bench/bench_reconstruct_gpu.py --out OUTDIR/reconstruct-gpu.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dense_baseline import dense_generator

import qgen_infer
from qgen_infer.reconstruction import reconstruct
from qgen_infer.solve import sample_latent

REPO = Path(__file__).resolve().parents[1]


def dense_fp16(model: Any) -> Any:
    """The model with its generator as dense fp16 torch layers (fp32 in the CPU smoke test);
    ``precision="fp16"`` casts the activations and runs the sensing net in fp16."""
    out = copy.copy(model)  # reconstruct() reads generator, sensing, config, solver, device
    half = model.device.type == "cuda"
    out.generator = dense_generator(model, torch.float16 if half else torch.float32)
    return out


def timed(model: Any, y: np.ndarray, steps: int, graph: bool, batch: int,
          precision: str) -> dict[str, float]:
    kw = dict(steps=steps, batch_size=batch, cuda_graph=graph, precision=precision)
    cuda = model.device.type == "cuda"
    reconstruct(model, y, **kw)  # warm-up: compilation, autotuning, graph capture
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rec = reconstruct(model, y, **kw)
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"img_s": len(y) / sec, "seconds": sec,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
            "loss": float(np.mean(rec.loss))}


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
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
    rows = []
    for bits in args.bits:
        path = REPO / "models" / f"mnist-m25-{bits}bit.qgen"
        packed = qgen_infer.load(path, backend="triton", device=dev)
        ref = qgen_infer.load(path, backend="reference", device=dev)
        cfg = packed.config
        z = sample_latent(args.images, cfg["latent_dim"], packed.solver.get("sparsity"),
                          generator=torch.Generator().manual_seed(0), device=dev)
        with torch.no_grad():
            y = ref.sensing(ref.generator(z)).cpu().numpy()
        dense = dense_fp16(ref)
        variants = [("torch-fp16", dense, False, "fp16"), ("torch-fp16+graph", dense, True, "fp16"),
                    ("packed-fp16", packed, False, "fp16"),
                    ("packed-fp16+graph", packed, True, "fp16"),
                    ("packed", packed, False, "fp32"), ("packed+graph", packed, True, "fp32")]
        if dev.type != "cuda":  # smoke test: no graphs, no half precision
            variants = [v[:3] + ("fp32",) for v in variants if not v[2]]
        for steps in args.steps:
            base = None
            for variant, model, graph, precision in variants:
                r = timed(model, y, steps, graph, args.batch_size, precision)
                base = base or r["img_s"]
                rows.append((bits, steps, variant, r, r["img_s"] / base))
                print(bits, steps, variant, f"{r['img_s']:.0f} img/s, peak "
                      f"{r['peak_mib']:.0f} MiB", flush=True)
            write_report(args, dev, rows)
        if args.profile is not None and bits == args.bits[0]:
            models = {"torch-fp16": dense, "packed-fp16": packed}
            args.profile.write_text(profile_tables(bits, y, models, args))
            print(f"wrote {args.profile}", flush=True)
    print(f"wrote {args.out}")
    return 0


def write_report(args, dev: torch.device, rows: list) -> None:
    """The markdown table of every row so far (rewritten after each group: a run cut short
    keeps what it measured)."""
    best_fp16 = {(b, t): max(r["img_s"] for bb, tt, v, r, _ in rows
                             if (bb, tt) == (b, t) and v.startswith("torch"))
                 for b, t, *_ in rows}
    lines = [
        "# Reconstruction throughput on the GPU: packed Triton vs dense torch fp16",
        "",
        f"- command: `python bench/bench_reconstruct_gpu.py --out {args.out.name}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: "
        f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}",
        f"- {args.images} measurements y = A(G(z)) of random sparse z, batch {args.batch_size}, "
        "restarts 1; one timed run after a warm-up (compilation and capture excluded)",
        "- models: the shipped `models/mnist-m25-{k}bit.qgen` (MLP 784-500-500-784, m = 25)",
        "- vs fp16: img/s over the first row (eager torch fp16); vs best: over the faster torch "
        "fp16 variant of the same bits and T",
        "",
        "| bits | T | variant | img/s | vs fp16 eager | vs best fp16 | peak MiB | mean loss |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bits, steps, variant, r, ratio in rows:
        lines.append(f"| {bits} | {steps} | {variant} | {r['img_s']:.0f} | {ratio:.2f}x | "
                     f"{r['img_s'] / best_fp16[(bits, steps)]:.2f}x | {r['peak_mib']:.0f} | "
                     f"{r['loss']:.4g} |")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
