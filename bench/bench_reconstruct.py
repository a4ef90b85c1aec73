"""Reconstruction throughput: packed 1-4-bit generators inside latent proximal GD against the
fp32 torch reference of the same model, on MNIST's 1,000 evaluation images.

For every bit width and solver length T this times ``qgen_infer.reconstruct`` (the loop of
``qgen-reconstruct``) on each engine backend asked for, and the *fp32 reference*: the exported
file's weights dequantized once into plain dense ``nn.Linear`` layers and activations
(``qgen_infer/engine/dense_baseline.py``; the baseline pays no per-call quantization), run
through the same ``qgen_infer.reconstruct`` (the model object with its generator swapped) with
the same per-batch seeds, steps, step size and sparsity. Both use the file's fp32 sensing net A.
Per configuration the fastest of ``--repeats`` timed runs in each of ``--rounds`` processes (the
rounds alternate the variants' order), each after a one-batch warm-up that takes thread-pool
start-up and lazy initialisation out of the number.

Each run is a fresh subprocess so its peak memory (``ru_maxrss``) is its own; the child also
reports its RSS just before the timed run, so "Δ peak" is what the solve added on top of the
loaded model (tracemalloc cannot see torch's allocator, so it is not used).

Models: by default a fresh *untrained* MNIST-shaped SDLSS model per bit width (MLP 784-500-500-784,
m = 25, s = 100, β = 0.0087 as in the trained runs): throughput does not depend on training
quality. ``--checkpoint PATH[:BITS]`` benchmarks a trained ``model.pt`` instead (exported at
BITS, default its trained width). Reconstructions are also compared with the fp32 reference
(max |Δx̂|), so a fast but wrong backend shows.

    python bench/bench_reconstruct.py --threads 1 2 --steps 3 20 \\
        --out bench/results/reconstruct.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"
MNIST_CONFIG: dict[str, Any] = {
    "family": "mlp", "image_shape": [1, 28, 28], "latent_dim": 784, "measurements": 25,
    "hidden": 500, "negative_slope": 0.2, "granularity": "tensor",
}
# the trained runs' solver (runs/mnist-m25-sdlss-*: s = 100, β learned to ~0.0087)
MNIST_SOLVER: dict[str, Any] = {"method": "sdlss", "sparsity": 100, "steps": 3, "project": True,
                                "step_size": 0.0087}


# --- child: one timed run -------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import qgen_infer
    from qgen_infer.reconstruction import solver_options

    backend = "reference" if args.variant == "fp32" else args.variant
    model = qgen_infer.load(args.qgen, backend=backend)
    opts = solver_options(model, steps=args.steps, restarts=1, batch_size=args.batch_size,
                          seed=0)
    y = np.load(args.y)
    if args.variant == "fp32":
        from qgen_infer.engine.dense_baseline import dense_generator

        # the same model object with its generator dense: both variants run the same code
        # (qgen_infer.reconstruct: input checks, batching, start latents, output copies)
        model = dataclasses.replace(model, generator=dense_generator(model))

    def run(yy: np.ndarray) -> np.ndarray:
        return qgen_infer.reconstruct(model, yy, opts).x_hat

    run(y[:min(8, len(y))])  # warm-up: thread pools, lazy kernel set-up, first allocations
    rss_before = _rss_mib()
    times = []
    for _ in range(args.repeats):  # best of N: the least disturbed run of a shared machine
        t0 = time.perf_counter()
        x_hat = run(y)
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    np.save(args.x_out, x_hat)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "images": int(y.shape[0]),
                      "peak_mib": peak, "rss_before_mib": rss_before,
                      "backend": model.backend.name,
                      "thread_pool": getattr(model.backend, "thread_pool", None),
                      "dense_products": dense_products(model.backend)}))


def dense_products(backend: Any) -> str | None:
    """For ``auto``: how many of the products its dispatcher chose the dense fp32 path for."""
    report = getattr(backend, "dispatch_report", None)
    if report is None or backend.dispatch != "measured":
        return None
    choices = report()["choices"]
    return f"{sum(c['path'] == 'dense' for c in choices)}/{len(choices)}"


# --- parent: models, runs, table ------------------------------------------------------------


def fresh_checkpoint(path: Path, bits: int, seed: int = 0) -> Path:
    """An untrained MNIST-shaped SDLSS model at ``bits``, saved like qgen-train's model.pt."""
    import torch

    from qgen_infer.checkpoint import save_checkpoint
    from qgen_infer.models import build_generator, build_sensing

    torch.manual_seed(seed)
    config = {**MNIST_CONFIG, "bits": bits}
    save_checkpoint(path, {
        "config": config, "solver": dict(MNIST_SOLVER),
        "generator": build_generator(config).state_dict(),
        "sensing": build_sensing(config).state_dict(),
        "log_step_size": torch.tensor(float(np.log(MNIST_SOLVER["step_size"]))),
        "train": {"epochs": 0, "step": 0, "seed": seed, "wall_time_s": 0.0,
                  "note": "untrained: bench_reconstruct.py throughput model"},
    })
    return path


def prepare_models(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import warnings

    from qgen_infer.export import PostTrainingQuantizationWarning, export_checkpoint

    if args.model:  # packed files as they are: nothing to export
        from qgen_infer.format import read_qgen

        models = []
        for path in args.model:
            qf = read_qgen(path)
            weights = sum(int(np.prod(layer.weight_shape)) for layer in qf.layers
                          if hasattr(layer, "weight_shape"))
            models.append({"qgen": str(path), "bits": qf.bits,
                           "source": f"shipped {path}", "file_bytes": Path(path).stat().st_size,
                           "weights": weights,
                           "packed_bytes": sum(int(layer.codes.numel()) for layer in qf.layers
                                               if hasattr(layer, "codes"))})
        return models
    specs: list[tuple[Path, int | None, str]] = []
    if args.checkpoint:
        for item in args.checkpoint:
            path, _, bits = item.partition(":")
            specs.append((Path(path), int(bits) if bits else None, f"trained {path}"))
    else:
        for bits in args.bits:
            ckpt = fresh_checkpoint(work / f"fresh-{bits}.pt", bits)
            specs.append((ckpt, bits, "fresh untrained"))
    models = []
    for i, (ckpt, bits, source) in enumerate(specs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PostTrainingQuantizationWarning)
            res = export_checkpoint(ckpt, work / f"model-{i}.qgen", bits=bits)
        models.append({"qgen": str(res.path), "bits": res.bits,
                       "source": source + (" (post-training quantized)" if res.post_training
                                           else ""),
                       "file_bytes": res.file_bytes, "weights": res.weight_count,
                       "packed_bytes": res.packed_bytes})
    return models


def measurements(qgen: str, data_root: Path, count: int, out: Path) -> Path:
    """y = A(x) for MNIST's evaluation images (t10k: first 9,000 train, last 1,000 eval)."""
    import torch

    import qgen_infer
    from qgen_infer.data import load_images, split_train_eval

    _, evals = split_train_eval(load_images("mnist", data_root), 1000)
    x = evals[:count]
    with torch.no_grad():
        y = qgen_infer.load(qgen).sensing(x).numpy()
    np.save(out, y.astype(np.float32))
    return out


def run_child(model: dict[str, Any], variant: str, steps: int, threads: int, y: Path,
              x_out: Path, batch_size: int, repeats: int = 1) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--qgen", model["qgen"],
           "--y", str(y), "--steps", str(steps),
           "--threads-one", str(threads), "--batch-size", str(batch_size), "--x-out", str(x_out),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({variant}, {steps} steps):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="bit widths of the fresh models (ignored with --checkpoint)")
    p.add_argument("--checkpoint", action="append", default=None, metavar="PATH[:BITS]",
                   help="benchmark a trained model.pt (exported at BITS) instead; repeatable")
    p.add_argument("--model", action="append", default=None, metavar="FILE.qgen",
                   help="benchmark a packed file as it is (e.g. models/mnist-m25-1bit.qgen); "
                   "repeatable, takes precedence over --checkpoint and --bits")
    p.add_argument("--backends", nargs="+", default=["reference", "cpu"],
                   choices=["reference", "cpu", "auto", "triton"])
    p.add_argument("--steps", type=int, nargs="+", default=[3, 20])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--count", type=int, default=1000, help="evaluation images")
    p.add_argument("--batch-size", type=int, default=256, help="as qgen-reconstruct's default")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--note", default="", help="a line for the report (e.g. machine load)")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed runs per process; the fastest is reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="processes per variant and configuration, the variants' order "
                        "alternating between rounds (fp32, backends, then reversed); the "
                        "fastest is reported, so slow drift of a shared machine hits all alike")
    # the child's arguments
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--qgen", help=argparse.SUPPRESS)
    p.add_argument("--y", help=argparse.SUPPRESS)
    p.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--x-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.threads = args.threads_one
        args.steps = args.steps[0]  # one run: a single T
        child(args)
        return

    from qgen_infer.engine import backend_available

    backends = [b for b in args.backends
                if backend_available("cpu" if b == "auto" else b)]  # auto: cpu's dispatcher
    skipped = sorted(set(args.backends) - set(backends))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-reconstruct-") as tmp:
        work = Path(tmp)
        models = prepare_models(args, work)
        for mi, model in enumerate(models):
            y = measurements(model["qgen"], args.data_root, args.count, work / f"y-{mi}.npy")
            for threads in args.threads:
                for steps in args.steps:
                    variants = ["fp32", *backends]
                    best: dict[str, dict[str, Any]] = {}
                    for rnd in range(args.rounds):  # alternating orders: drift hits all alike
                        for variant in variants if rnd % 2 == 0 else variants[::-1]:
                            r = run_child(model, variant, steps, threads, y,
                                          work / f"x-{mi}-{variant}.npy", args.batch_size,
                                          args.repeats)
                            if variant not in best or r["seconds"] < best[variant]["seconds"]:
                                best[variant] = r
                    base = best["fp32"]
                    base_x = np.load(work / f"x-{mi}-fp32.npy")
                    for variant in variants:
                        r = best[variant]
                        x_hat = np.load(work / f"x-{mi}-{variant}.npy")
                        row = {**r, "bits": model["bits"], "variant": variant, "steps": steps,
                               "threads": threads, "ips": r["images"] / r["seconds"],
                               "speedup": base["seconds"] / r["seconds"],
                               "vs_reference": best["reference"]["seconds"] / r["seconds"]
                               if "reference" in best else None,
                               "max_dx": float(np.abs(x_hat - base_x).max()),
                               "g_bytes": 4 * model["weights"] if variant == "fp32"
                               else model["packed_bytes"], "source": model["source"]}
                        rows.append(row)
                        print(f"{model['bits']}-bit T={steps:<3} threads={threads} "
                              f"{variant:<9} {row['ips']:9.1f} img/s  x{row['speedup']:.2f}  "
                              f"peak {r['peak_mib']:.0f} MiB  max|dx| {row['max_dx']:.2e}"
                              + (f"  dense products {r['dense_products']}"
                                 if r.get("dense_products") else ""), flush=True)
    pools = sorted({r["thread_pool"] for r in rows if r.get("thread_pool")})
    if pools:
        args.note = "; ".join(filter(None, [args.note, "cpu backend threads: "
                                            + "/".join(pools) + " (csrc/README.md, Threads)"]))
    write_report(render(rows, models, args, skipped, argv), args.out)


def write_report(report: str, out: Path | None) -> None:
    """The markdown report to ``out`` (its folder made), or to stdout without one."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}")
    else:
        print(report)


def render(rows: list[dict[str, Any]], models: list[dict[str, Any]], args: argparse.Namespace,
           skipped: list[str], argv: list[str] | None) -> str:
    cmd = shlex.join(["python", "bench/bench_reconstruct.py", *(argv or sys.argv[1:])])
    lines = [
        "# Reconstruction throughput: packed generator vs fp32 reference (CPU)",
        "",
        f"- command: `{cmd}`",
        f"- date: {datetime.date.today().isoformat()}; host CPU: {cpu_model()}; "
        f"python {platform.python_version()}; code: {code_version()}",
        f"- images: {args.count} MNIST evaluation images (last 1,000 of t10k), restarts 1, "
        f"batch size {args.batch_size}; per row the fastest of {args.rounds} round(s) x "
        f"{args.repeats} timed runs, each after a one-batch warm-up; rounds alternate the "
        "variants' order",
        f"- models: {'; '.join(sorted({m['source'] for m in models}))}; fp32 = the same "
        "file's dequantized weights as dense torch nn.Linear, run through the same "
        "qgen_infer.reconstruct with the same seeds",
        "- img/s: images / wall time of the solve (load excluded); speedup: over fp32 at the "
        "same bits, T and threads (vs reference: over the reference backend); auto: the cpu "
        "backend choosing per product between its kernels and dense fp32 (N/M: products it ran "
        "dense; cost table: QGEN_CPU_DISPATCH_CACHE or ~/.cache); peak: ru_maxrss of the run's "
        "process; Δ peak: peak minus "
        "RSS after loading; max |Δx̂|: largest difference from the fp32 reconstruction; "
        "G weight bytes: the generator's weights as stored (fp32 dense, or packed codes in the "
        ".qgen; the cpu backend holds two repacked bit-plane copies in memory)",
    ]
    if skipped:
        lines.append(f"- backends not available here, not run: {', '.join(skipped)}")
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| bits | T | threads | variant | img/s | speedup | vs reference | peak MiB "
              "| Δ peak MiB | max abs Δx̂ | G weight bytes |",
              "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        variant = r["variant"] + (f" ({r['dense_products']} products dense)"
                                  if r.get("dense_products") else "")
        vs_ref = f"{r['vs_reference']:.2f}x" if r.get("vs_reference") else "–"
        lines.append(f"| {r['bits']} | {r['steps']} | {r['threads']} | {variant} | "
                     f"{r['ips']:.1f} | {r['speedup']:.2f}x | {vs_ref} | {r['peak_mib']:.0f} | "
                     f"{max(r['peak_mib'] - r['rss_before_mib'], 0):.0f} | {r['max_dx']:.1e} | "
                     f"{r['g_bytes']:,} |")
    return "\n".join(lines) + "\n"


def code_version() -> str:
    """``commit abc1234`` (``+ local changes`` when the work tree differs), or ``unknown``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"commit {head}" + (" + local changes" if dirty else "")


def cpu_model() -> str:
    from qgen_infer.engine.cpu_dispatch import cpu_model_name

    return cpu_model_name()

if __name__ == "__main__":
    main()
