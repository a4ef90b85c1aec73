"""Score the MNIST models of paper/train_mnist_m25.sh (m = 25 and 100) into bench/results/mnist.md.

For every finished run: PSNR/SSIM on the 1,000 eval images (the last 1,000 of the MNIST test
split) with the checkpoint's fake-quantized generator as trained (T = 3 steps, 1 restart), the same
with a longer inference (T = 6, 4 restarts), and — for 1-4-bit models — through the packed engine
(qgen-export, then qgen_infer.load + qgen_infer.reconstruct on the fastest CPU backend). Reference
points: the mean training image and the best linear code with 25 / 100 numbers (PCA fitted on the
9,000 training images).

    python paper/mnist_m25_report.py --runs runs --data-root ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.data import load_images, split_train_eval
from qgen_infer.engine import backend_available, load
from qgen_infer.export import export_checkpoint
from qgen_infer.metrics import psnr, ssim
from qgen_infer.reconstruction import reconstruct
from qgen_infer.train import SolverSettings, evaluate_reconstruction

RUNS = [  # (folder, label, how it was trained)
    ("mnist-m25-sdlss-32", "SDLSS 32-bit", "from scratch"),
    ("mnist-m25-sdlss-4", "SDLSS 4-bit", "from scratch (the paper's recipe)"),
    ("mnist-m25-sdlss-4-ft", "SDLSS 4-bit", "fine-tuned from the 32-bit model"),
    ("mnist-m25-sdlss-3-ft", "SDLSS 3-bit", "fine-tuned from the 32-bit model"),
    ("mnist-m25-sdlss-2-ft", "SDLSS 2-bit", "fine-tuned from the 32-bit model"),
    ("mnist-m25-sdlss-1", "SDLSS 1-bit", "from scratch (the paper's recipe)"),
    ("mnist-m25-sdlss-1-ft", "SDLSS 1-bit, per-channel", "fine-tuned from the 32-bit model"),
    ("mnist-m25-sdlss-1-ch", "SDLSS 1-bit, per-channel", "from scratch"),
    ("mnist-m25-sdlss-1-long", "SDLSS 1-bit", "from scratch, twice as long"),
    ("mnist-m25-dcs-32", "DCS 32-bit", "from scratch (dense 100-d latent)"),
    ("mnist-m100-sdlss-32", "SDLSS 32-bit", "from scratch"),
    ("mnist-m100-sdlss-1", "SDLSS 1-bit", "from scratch (the paper's recipe)"),
]


def linear_baselines(train: torch.Tensor, evals: torch.Tensor) -> dict[str, float]:
    """PSNR of the mean training image and of PCA-k reconstructions (k = 25, 100)."""
    xt = train.flatten(1).double()
    xe = evals.flatten(1).double()
    mean = xt.mean(0)
    out = {"mean image": float(psnr(evals, mean.float().expand_as(xe).reshape(evals.shape))
                                .mean())}
    _, _, v = torch.linalg.svd(xt - mean, full_matrices=False)
    for k in (25, 100):
        basis = v[:k]
        rec = (xe - mean) @ basis.T @ basis + mean
        out[f"PCA-{k}"] = float(psnr(evals, rec.float().reshape(evals.shape)).mean())
    return out


def score_run(run: Path, evals: torch.Tensor, backend: str, work: Path) -> dict:
    ckpt = load_checkpoint(run / "model.pt")
    gen, sense = build_from_checkpoint(ckpt)
    sv = ckpt["solver"]
    step = float(ckpt["log_step_size"].exp())
    row = {"epochs": ckpt["train"]["epochs"], "wall_time_s": ckpt["train"]["wall_time_s"],
           "bits": ckpt["config"]["bits"], "granularity": ckpt["config"]["granularity"],
           "final": ckpt["train"].get("final", False), "step_size": step}
    solver = SolverSettings(sv["method"], int(sv["latent_dim"]), sv["sparsity"], int(sv["steps"]),
                            bool(sv["project"]))
    ev = evaluate_reconstruction(gen, sense, evals, solver, step)
    row.update(psnr=ev["psnr"], ssim=ev["ssim"])
    long = SolverSettings(solver.method, solver.latent_dim, solver.sparsity, 6, solver.project)
    ev = evaluate_reconstruction(gen, sense, evals, long, step, restarts=4)
    row.update(psnr_long=ev["psnr"], ssim_long=ev["ssim"])
    gen_params = sum(v.numel() for k, v in ckpt["generator"].items() if k.endswith("weight"))
    row["fp32_weight_bytes"] = 4 * gen_params
    if row["bits"] <= 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = export_checkpoint(run / "model.pt", work / f"{run.name}.qgen")
        model = load(exp.path, backend=backend)
        with torch.no_grad():
            y = model.sensing(evals)
        t0 = time.perf_counter()
        rec = reconstruct(model, y.numpy(), batch_size=250)
        x_hat = torch.from_numpy(rec.x_hat)
        row.update(packed_psnr=float(psnr(evals, x_hat).mean()),
                   packed_ssim=float(ssim(evals, x_hat).mean()),
                   packed_backend=model.backend.name, packed_seconds=time.perf_counter() - t0,
                   packed_weight_bytes=exp.packed_bytes, qgen_file_bytes=exp.file_bytes)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--out", type=Path, default=Path("bench/results/mnist.md"))
    p.add_argument("--json", type=Path, default=Path("bench/results/mnist.json"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = load_images("mnist", args.data_root)
    train, evals = split_train_eval(images, 1000)
    backend = "cpu" if backend_available("cpu") else "reference"
    work = args.runs / "eval"
    work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, label, how in RUNS:
        if not (args.runs / name / "model.pt").is_file():
            print(f"skip {name}: no model.pt", file=sys.stderr)
            continue
        print(f"scoring {name} ...", file=sys.stderr)
        rows[name] = {"label": label, "how": how, **score_run(args.runs / name, evals, backend,
                                                              work)}
    base = linear_baselines(train, evals)
    args.json.write_text(json.dumps({"runs": rows, "baselines": base}, indent=2) + "\n")
    write_markdown(args, rows, base, backend)
    print(f"wrote {args.out} and {args.json}")


def _fmt(v: float | None, nd: int = 2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def write_markdown(args: argparse.Namespace, rows: dict, base: dict, backend: str) -> None:
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip() or platform.processor()
    lines = [
        "# MNIST, s = 100: SDLSS at 1/2/3/4/32 bits and the 32-bit DCS baseline (m = 25, 100)",
        "",
        f"Measured {dt.date.today().isoformat()} on {cpu} (2 cores, shared by two training lanes "
        "and other jobs), torch " + torch.__version__ + ".",
        "",
        "Data: the real MNIST test split (10,000 images); training on the first 9,000, evaluation "
        "on the last 1,000. The SDLSS authors trained on the 60,000-image training split.",
        "",
        "Commands:",
        "",
        "```bash",
        "paper/train_mnist_m25.sh runs 60 20 ../shared/data/mnist   # the models (two lanes)",
        f"python paper/mnist_m25_report.py --runs {args.runs} --data-root {args.data_root}",
        "```",
        "",
        "PSNR (dB, peak 1, per image then averaged) and SSIM (scikit-image's definition) on the "
        "1,000 eval images. *As trained*: T = 3 proximal steps with the learned step size, one "
        "random sparse start — the training code's fake-quantized generator. *Packed engine*: the "
        f"same through the exported `.qgen` file on the `{backend}` backend (`qgen_infer.load` + "
        "`qgen_infer.reconstruct`; other random starts, so it differs from *as trained* by noise "
        "only). *Longer inference*: T = 6 steps, best of 4 restarts (fake-quantized generator).",
    ]
    for m in (25, 100):
        ref = rows.get(f"mnist-m{m}-sdlss-32")
        mine = {k: v for k, v in rows.items() if k.startswith(f"mnist-m{m}-")}
        if mine:
            lines += ["", f"## m = {m}", ""] + _table(mine, ref, f"mnist-m{m}-sdlss-32")
    lines += [
        "",
        "`*`: the run had not reached its target epochs when scored. Wall time is the training "
        "time on one thread of the shared 2-core machine (two or three runs at a time).",
        "",
        "Reference points on the same 1,000 images:",
        "",
        "| reference | PSNR (dB) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in base.items()]
    lines += ["", "Training curves (eval PSNR against steps): `mnist-training.png`.", ""]
    args.out.write_text("\n".join(lines) + "\n")


def _table(rows: dict, ref: dict | None, ref_name: str) -> list[str]:
    lines = [
        "| model | trained | epochs | wall time | PSNR as trained | SSIM | PSNR packed engine "
        "| SSIM packed | PSNR T=6, 4 restarts | SSIM | gap to 32-bit (as trained) | generator "
        "weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        gap = (r["psnr"] - ref["psnr"]) if ref else None
        size = (f"{r['packed_weight_bytes'] / 1024:.0f} KiB "
                f"({r['fp32_weight_bytes'] / r['packed_weight_bytes']:.1f}x smaller)"
                if "packed_weight_bytes" in r else f"{r['fp32_weight_bytes'] / 1024:.0f} KiB fp32")
        lines.append(
            f"| {r['label']} | {r['how']} | {r['epochs']}{'' if r['final'] else '*'} | "
            f"{r['wall_time_s'] / 60:.0f} min | {_fmt(r['psnr'])} | {_fmt(r['ssim'], 4)} | "
            f"{_fmt(r.get('packed_psnr'))} | {_fmt(r.get('packed_ssim'), 4)} | "
            f"{_fmt(r['psnr_long'])} | {_fmt(r['ssim_long'], 4)} | "
            f"{'—' if name == ref_name or gap is None else f'{gap:+.2f} dB'} | "
            f"{size} |")
    return lines


if __name__ == "__main__":
    main()
