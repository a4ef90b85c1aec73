#!/usr/bin/env python
"""Short studies of the CIFAR-10 training recipe, cheaper than a training run.

``ab``: train a fresh DCGAN pair for ``--steps`` Adam steps at a constant rate with some
qgen-train settings changed (``--set gdl_weight=1.0``), scoring the first ``--eval-images``
eval images every ``--every`` steps (1 random start); one JSON line per score, so runs with
different settings can be compared at equal steps.

``diagnose``: what limits a checkpoint: PSNR against the number of solver steps T and the step
size (x1, x3, x10 the learned beta), the per-image mean-colour baseline, and the generator's
own reach (Adam on z straight against the images, sparse and dense: no sensing in the way).

    python paper/cifar_recipe.py ab --name base --steps 300
    python paper/cifar_recipe.py ab --name gdl1 --steps 300 --set gdl_weight=1.0
    python paper/cifar_recipe.py ab --name zero --steps 300 --zero-start
    python paper/cifar_recipe.py diagnose RUNS/cifar10-m100-sdlss-32-bf16/model.pt

Each process uses one torch thread (run two side by side on two cores). Findings:
bench/results/cifar10-recipe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _setting(text: str) -> tuple[str, Any]:
    """``key=value`` for a TrainConfig field, the value in the field's type."""
    from qgen_infer.train.config import TrainConfig

    key, sep, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with a qgen-train setting, got "
                                         f"{text!r}")
    default = getattr(TrainConfig, key)
    if isinstance(default, bool):
        return key, value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int) or key in ("sparsity", "latent_dim", "threads"):
        return key, int(value)
    if isinstance(default, float) or key in ("lr", "step_size_lr"):
        return key, float(value)
    return key, value


def _zero_starts() -> None:
    """Every latent start z0 = 0 (training and scoring): the first step's support is then the
    gradient's s largest entries instead of a random one."""
    import qgen_infer.solve.proximal as proximal
    import qgen_infer.train.objective as objective

    def zeros(batch: int, dim: int, *_a: object, **kw: Any) -> torch.Tensor:
        return torch.zeros(batch, dim, device=kw.get("device", "cpu"),
                           dtype=kw.get("dtype", torch.float32))

    proximal.sample_latent = objective.sample_latent = zeros


def ab(args: argparse.Namespace) -> int:
    from qgen_infer.data import load_train_eval
    from qgen_infer.train import TrainConfig, Trainer, evaluate_reconstruction

    if args.zero_start:
        _zero_starts()
    settings = dict(args.set)
    cfg = TrainConfig(out=str(args.out / args.name), dataset="cifar10",
                      data_root=str(args.data_root),
                      **{"measurements": 100, "sparsity": 100, "precision": "bf16", **settings,
                         "epochs": 1, "lr_schedule": "constant", "threads": 1})
    train, evals = load_train_eval("cifar10", cfg.data_root)
    trainer = Trainer(cfg, train, evals[:args.eval_images])
    order_rng = torch.Generator().manual_seed(0)
    order, pos, bs = torch.randperm(train.shape[0], generator=order_rng), 0, cfg.batch_size
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        if pos + bs > train.shape[0]:
            order, pos = torch.randperm(train.shape[0], generator=order_rng), 0
        losses = trainer.train_step(train[order[pos:pos + bs]])
        pos += bs
        if step % args.every:
            continue
        beta = float(trainer.log_step_size.detach().exp())
        res = evaluate_reconstruction(trainer.generator, trainer.sensing, trainer.eval_images,
                                      trainer.solver, beta)
        trainer.generator.train()
        trainer.sensing.train()
        print(json.dumps({"name": args.name, "step": step,
                          "seconds": round(time.perf_counter() - start, 1),
                          "psnr": round(res["psnr"], 3), "ssim": round(res["ssim"], 4),
                          "loss_total_meas_iso_gdl": [round(v, 2) for v in losses.tolist()],
                          "beta": beta, "settings": settings, "zero_start": args.zero_start}),
              flush=True)
    return 0


def diagnose(args: argparse.Namespace) -> int:
    from qgen_infer.data import load_train_eval
    from qgen_infer.metrics import psnr
    from qgen_infer.solve.proximal import hard_threshold, project_sphere
    from qgen_infer.train import SolverSettings, evaluate_reconstruction
    from qgen_infer.train.trainer import models_from_checkpoint_path

    g, a, ckpt = models_from_checkpoint_path(args.checkpoint)
    g.eval()
    a.eval()
    solver = SolverSettings(**{k: v for k, v in ckpt["solver"].items() if k != "step_size"})
    beta = math.exp(float(ckpt["log_step_size"]))
    _, evals = load_train_eval(ckpt["train"]["settings"]["dataset"],
                               args.data_root or ckpt["train"]["settings"]["data_root"])
    x = evals[:args.eval_images]
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "epochs": ckpt["train"]["epochs"],
                           "images": x.shape[0], "beta": beta}
    mean_colour = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    out["mean_colour_psnr"] = float(psnr(x, mean_colour).mean())
    out["solver"] = {}
    for steps in (0, 1, 3, 10, 30):
        for scale in ((1,) if steps == 0 else (1, 3, 10)):
            res = evaluate_reconstruction(g, a, x, solver, beta * scale, steps=steps)
            out["solver"][f"T={steps} beta*{scale}"] = round(res["psnr"], 3)
    target = x[:args.fit_images]
    out["generator_reach"] = {}
    for sparsity in (solver.sparsity, None):
        z = (0.05 * torch.randn(target.shape[0], solver.latent_dim)).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.02)

        def latent(z: torch.Tensor, sparsity: int | None = sparsity) -> torch.Tensor:
            zs = hard_threshold(z, sparsity)
            return project_sphere(zs) if solver.project else zs

        for _ in range(args.fit_steps):
            loss = (g(latent(z)) - target).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            key = f"s={sparsity}" if sparsity else "dense"
            out["generator_reach"][key] = round(float(psnr(target, g(latent(z))).mean()), 3)
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] /
                   "shared" / "data" / "cifar10", help="the CIFAR-10 files (default: "
                   "../shared/data/cifar10)")
    p.add_argument("--eval-images", type=int, default=200,
                   help="first N eval images scored (the first 200 are all aeroplanes: "
                        "compare settings with each other, not with the table)")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("ab", help="a short training run with some settings changed")
    q.add_argument("--name", required=True)
    q.add_argument("--steps", type=int, default=300)
    q.add_argument("--every", type=int, default=100)
    q.add_argument("--set", type=_setting, nargs="*", default=[], metavar="FIELD=VALUE",
                   help="qgen-train settings (TrainConfig fields), e.g. gdl_weight=1.0 lr=5e-4")
    q.add_argument("--zero-start", action="store_true",
                   help="start every latent at 0 instead of a random sparse unit vector")
    q.add_argument("--out", type=Path, default=Path("runs/recipe"),
                   help="nothing is written there; the trainer's config needs a folder name")
    d = sub.add_parser("diagnose", help="what limits a checkpoint's PSNR")
    d.add_argument("checkpoint", type=Path)
    d.add_argument("--fit-images", type=int, default=64)
    d.add_argument("--fit-steps", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    return ab(args) if args.command == "ab" else diagnose(args)


if __name__ == "__main__":
    sys.exit(main())
