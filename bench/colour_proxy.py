#!/usr/bin/env python
"""A small stand-in for the colour (DCGAN) training, fast enough to study on a CPU: the embedded
``patches`` set at 16x16, generator width 16 (instead of 32x32 and 64), m = 50, s = 100, 32-bit
SDLSS, one thread; ~40 s per 45-step epoch here against ~6 min for the paper-size networks.

    python bench/colour_proxy.py --out runs/proxy/base --epochs 15
    python bench/colour_proxy.py --out runs/proxy/nobn0 --epochs 15 --no-first-batchnorm
    python bench/colour_proxy.py --out runs/proxy/base --epochs 40 --resume
    python bench/colour_proxy.py --out runs/proxy/w64 --width 64 --epochs 20   # paper width
    python bench/colour_proxy.py --out runs/proxy/s32 --image-size 32 --epochs 12  # paper size

Prints the mean training patch's eval PSNR (the level a generator that ignores z reaches), the
eval PSNR after every epoch (as qgen-train logs it, also in OUT/log.jsonl) and, at the end, the
generator's spread over z: the per-pixel standard deviation of G(z) over 64 random s-sparse unit
latents (0 for a generator collapsed to one image).
Results: bench/results/colour-sdlss-1v32-14ep.md.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import qgen_infer.models.networks as networks
from qgen_infer.data.registry import load_split
from qgen_infer.metrics import psnr
from qgen_infer.solve import hard_threshold, project_sphere
from qgen_infer.train import TrainConfig, Trainer


class _Lines:
    """The progress hook Trainer.run takes, reduced to its per-epoch summary lines."""

    def __call__(self, **_: object) -> None:
        return None

    @staticmethod
    def write(msg: str) -> None:
        print(msg, flush=True)


def spread_over_z(generator: nn.Module, latent_dim: int, sparsity: int, n: int = 64) -> float:
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(0))
    z = project_sphere(hard_threshold(z, sparsity))  # latents as the solver leaves them
    with torch.no_grad():
        return float(generator.eval()(z).std(0).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.jsonl)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--no-first-batchnorm", action="store_true",
                   help="drop G's BatchNorm after the latent's fc layer (not resumable)")
    p.add_argument("--resume", action="store_true", help="continue OUT's checkpoint")
    p.add_argument("--step-size-lr", type=float, default=None,
                   help="Adam's rate for log beta (qgen-train --step-size-lr; default: "
                        "qgen-train's for the DCGAN networks, 1e-2)")
    p.add_argument("--sensing-loss", choices=("total", "srec"), default="total",
                   help="what trains A (qgen-train --sensing-loss)")
    p.add_argument("--srec-data-pairs", action=argparse.BooleanOptionalAction, default=None,
                   help="data-data pairs in the S-REC loss (qgen-train --[no-]srec-data-pairs; "
                        "default: qgen-train's for the DCGAN networks, on)")
    p.add_argument("--width", type=int, default=16,
                   help="generator width (the paper-size DCGAN: 64)")
    p.add_argument("--image-size", type=int, default=16, help="patch side (paper size: 32)")
    p.add_argument("--measurements", type=int, default=50, help="m (paper-size runs here: 100)")
    args = p.parse_args()
    if args.resume and args.no_first_batchnorm:
        p.error("--no-first-batchnorm runs cannot be resumed (the checkpoint lacks bn0)")
    torch.set_num_threads(1)
    networks.DCGAN_DEFAULTS["width"] = args.width  # the proxy's only change to the defaults
    train = load_split("patches", split="train", image_size=args.image_size)
    held_out = load_split("patches", split="eval", image_size=args.image_size)
    mean_level = psnr(held_out, train.mean(0, keepdim=True).expand_as(held_out)).mean()
    print(f"mean training patch: eval PSNR {float(mean_level):.2f} dB", flush=True)
    cfg = TrainConfig(out=args.out, dataset="patches", method="sdlss", bits=32,
                      measurements=args.measurements,
                      sparsity=100, epochs=args.epochs, lr=args.lr, lr_schedule=args.lr_schedule,
                      threads=1, sensing_loss=args.sensing_loss,
                      step_size_lr=args.step_size_lr, srec_data_pairs=args.srec_data_pairs)
    trainer = Trainer(cfg, train, held_out, resume=args.resume)
    if args.no_first_batchnorm:
        # bn0's parameters stay in Adam's list without gradients, which Adam skips
        trainer.generator.bn0 = nn.Identity()
    trainer.run(progress=_Lines())
    spread = spread_over_z(trainer.generator, trainer.solver.latent_dim, trainer.solver.sparsity)
    print(f"spread over z: {spread:.4f}", flush=True)


if __name__ == "__main__":
    main()
