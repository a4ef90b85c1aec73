"""The first few reconstructions of a run, for Figure 4.

A packed model's come straight from what qgen-reconstruct wrote (x.npy, recon/x_hat.npy and the
per-image PSNR/SSIM in recon/metrics.json). A 32-bit model has no packed form and qgen-eval keeps
no images, so those few are reconstructed here from the checkpoint, the way qgen-eval does it
(sensing net on the held-out images, latent proximal GD through the fake-quantized generator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paper_repro.commands import RunPaths
from paper_repro.plan import RunSpec

FIGURE_IMAGES = 8
FP32_SEED = 1234  # qgen-eval's default seed


@dataclass
class ReconImages:
    truth: np.ndarray  # [K, C, H, W] in [-1, 1]
    x_hat: np.ndarray  # [K, C, H, W] in [-1, 1]
    psnr: np.ndarray  # [K] dB
    ssim: np.ndarray  # [K]


def packed_images(paths: RunPaths, count: int = FIGURE_IMAGES) -> ReconImages | None:
    """The first ``count`` images of a finished qgen-reconstruct run (None if absent)."""
    try:
        metrics = json.loads((paths.recon_dir / "metrics.json").read_text())
        truth = np.load(paths.truth, mmap_mode="r")[:count]
        x_hat = np.load(paths.recon_dir / "x_hat.npy", mmap_mode="r")[:count]
    except (OSError, ValueError):
        return None
    per = metrics["per_image"][:count]
    return ReconImages(np.array(truth), np.array(x_hat),
                       np.array([p.get("psnr", np.nan) for p in per], dtype=np.float64),
                       np.array([p.get("ssim", np.nan) for p in per], dtype=np.float64))


def fp32_images(spec: RunSpec, paths: RunPaths, count: int = FIGURE_IMAGES) -> ReconImages:
    """Reconstruct the first ``count`` held-out images with a (32-bit) checkpoint."""
    import torch

    from qgen_infer.data import load_train_eval
    from qgen_infer.metrics import psnr, ssim
    from qgen_infer.solve import reconstruct_latent
    from qgen_infer.train.trainer import models_from_checkpoint_path

    gen, sense, ckpt = models_from_checkpoint_path(paths.checkpoint)
    gen.eval()
    sense.eval()
    _, evals = load_train_eval(spec.dataset, spec.data_root)
    x = evals[:count]
    sv = ckpt["solver"]
    with torch.no_grad():
        y = sense(x)
    res = reconstruct_latent(y, gen, sense, latent_dim=int(sv["latent_dim"]),
                             steps=int(sv["steps"]), step_size=float(ckpt["log_step_size"].exp()),
                             sparsity=sv["sparsity"], project=bool(sv["project"]),
                             seed=FP32_SEED)
    x_hat = res.x.detach()
    return ReconImages(x.numpy(), x_hat.numpy(), psnr(x, x_hat).double().numpy(),
                       ssim(x, x_hat).double().numpy())


def save_images(path: Path, images: ReconImages) -> None:
    np.savez(path, truth=images.truth, x_hat=images.x_hat, psnr=images.psnr, ssim=images.ssim)


def load_images_npz(path: Path) -> ReconImages | None:
    try:
        with np.load(path) as f:
            return ReconImages(f["truth"], f["x_hat"], f["psnr"], f["ssim"])
    except (OSError, ValueError, KeyError):
        return None


def run_images(spec: RunSpec, paths: RunPaths) -> ReconImages | None:
    """Figure 4's images of a run, from whichever place its evaluation left them."""
    return packed_images(paths) if spec.packed else load_images_npz(paths.fp32_images)
