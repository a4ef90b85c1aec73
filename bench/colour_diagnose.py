#!/usr/bin/env python
"""What a DCGAN-path checkpoint's sensing network and latent solver do on held-out patches:
the numbers behind the colour training notes (bench/results/colour-sdlss-1v32-14ep.md).

    python bench/colour_diagnose.py runs/colour/patches-m100-sdlss-32/model.pt
    python bench/colour_diagnose.py runs/proxy/base/model.pt --betas 0.001 0.01 0.1

For 64 eval patches x of the checkpoint's image size (the embedded ``patches`` set) it prints

- distances in measurement space against image space (mean over the patches, images in
  [-1, 1]): between x and its reconstruction G(ẑ) (the solver's T steps at the learned β from a
  random s-sparse start z₀), x and G(z₀), x and the mean patch x̄, G(ẑ) and G(z₀). An S-REC
  (isometry) trained A keeps each pair's two numbers close; a small measurement distance
  beside a large image distance means matched measurements no longer mean matched images;
- with ``--betas``: the solver's measurement loss before each step and the eval PSNR for each
  fixed step size β, to see whether the learned β is what limits the reconstruction.
"""

from __future__ import annotations

import argparse

import torch

from qgen_infer.data.registry import load_split
from qgen_infer.metrics import psnr
from qgen_infer.solve import proximal_gradient_descent, sample_latent
from qgen_infer.train.trainer import models_from_checkpoint_path


def _norm(t: torch.Tensor) -> float:
    return float(t.flatten(1).norm(dim=1).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a qgen-train model.pt of the DCGAN family")
    p.add_argument("--betas", type=float, nargs="*", default=[],
                   help="fixed step sizes to run the solver with")
    p.add_argument("--count", type=int, default=64, help="eval patches used")
    args = p.parse_args()
    torch.set_num_threads(1)
    generator, sensing, ckpt = models_from_checkpoint_path(args.checkpoint)
    side = ckpt["config"]["image_shape"][1]
    x = load_split("patches", split="eval", image_size=side)[:args.count]
    solver = ckpt["solver"]
    generator.eval()
    sensing.eval()
    with torch.no_grad():
        y = sensing(x)

    def solve(beta: float, history: bool = False):
        z0 = sample_latent(x.shape[0], solver["latent_dim"], solver["sparsity"],
                           generator=torch.Generator().manual_seed(0))
        res = proximal_gradient_descent(y, generator, sensing, z0, steps=solver["steps"],
                                        step_size=beta, sparsity=solver["sparsity"],
                                        project=solver["project"], record_history=history)
        return z0, res

    z0, res = solve(solver["step_size"])
    with torch.no_grad():
        x_hat, x0 = res.x, generator(z0)
        x_bar = x.mean(0, keepdim=True).expand_as(x)
        print(f"{args.checkpoint}: {ckpt['train']['epochs']} epochs, learned beta "
              f"{solver['step_size']:.4g}, eval PSNR {float(psnr(x, x_hat).mean()):.2f} dB")
        print(f"  {'pair':<16} {'|A(a)-A(b)|':>12} {'|a-b|':>8}")
        for name, a, b in (("x, G(z_hat)", x, x_hat), ("x, G(z0)", x, x0),
                           ("x, mean patch", x, x_bar), ("G(z_hat), G(z0)", x_hat, x0)):
            print(f"  {name:<16} {_norm(sensing(a) - sensing(b)):12.2f} {_norm(a - b):8.2f}")
        print(f"  |y| {_norm(y):.2f}, |x| {_norm(x):.2f}")
    for beta in args.betas:
        _, r = solve(beta, history=True)
        losses = ", ".join(f"{float(v):.1f}" for v in r.history.mean(1))
        print(f"  beta {beta:<8g} measurement loss per step {losses}; "
              f"eval PSNR {float(psnr(x, r.x.detach()).mean()):.2f} dB")


if __name__ == "__main__":
    main()
