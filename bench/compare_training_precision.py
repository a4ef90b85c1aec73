#!/usr/bin/env python
"""How far ``qgen-train --precision bf16`` moves training from fp32: the paper-size DCGAN (m = 100,
s = 100, SDLSS, batch 64) from the same initial weights on the same CIFAR-10 batches, once per
precision, in one process.

Reports (1) for the first batch, from identical weights: each loss in both precisions and, per
network, the cosine similarity and relative difference of the two gradients; (2) the losses of
``--steps`` training steps side by side; (3) eval PSNR / SSIM (fp32 solver, as every evaluation)
on the first ``--eval`` evaluation images after those steps::

    python bench/compare_training_precision.py --data-root ../shared/data/cifar10 --steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from qgen_infer.data import load_train_eval
from qgen_infer.train import TrainConfig, Trainer
from qgen_infer.train.objective import meta_learning_losses
from qgen_infer.train.precision import in_precision


def first_gradients(trainer: Trainer, x: torch.Tensor, precision: str
                    ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses and flattened gradients (generator, sensing, log β) of one batch, no update."""
    rng = torch.Generator().set_state(trainer.rng.get_state())  # both draw the same z0
    losses = meta_learning_losses(
        x, in_precision(trainer.generator, precision), in_precision(trainer.sensing, precision),
        trainer.log_step_size, trainer.solver, gdl_weight=trainer.cfg.gdl_weight, rng=rng,
        data_pairs=trainer.cfg.srec_data_pairs)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._backward(losses)
    grads = {name: torch.cat([p.grad.flatten() for p in params if p.grad is not None])
             for name, params in (("generator", trainer.generator.parameters()),
                                  ("sensing", trainer.sensing.parameters()),
                                  ("log_beta", [trainer.log_step_size]))}
    trainer.optimizer.zero_grad(set_to_none=True)
    parts = [losses.total, losses.measurement, losses.isometry, losses.gdl]
    return [float(v.detach()) for v in parts], grads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="CIFAR-10 (JPEG copy or binary) folder")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval", type=int, default=100, help="evaluation images scored at the end")
    p.add_argument("--bits", type=int, default=32, choices=(1, 2, 3, 4, 32))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, evals = load_train_eval("cifar10", args.data_root)
    batches = train[:64 * args.steps]
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(out=f"{tmp}/{precision}", dataset="cifar10", bits=args.bits,
                              measurements=100, sparsity=100, epochs=1, precision=precision)
            trainers[precision] = Trainer(cfg, batches, evals[:args.eval])  # same seed: same init
        ref = trainers["fp32"]
        assert all(torch.equal(a, b) for a, b in zip(ref.generator.state_dict().values(),
                   trainers["bf16"].generator.state_dict().values(), strict=True))
        print(f"# bf16 against fp32, {args.bits}-bit generator, CIFAR-10 (JPEG copy) from "
              f"{args.data_root}, {args.threads} thread(s)\n")
        first = {pr: first_gradients(t, batches[:64], pr) for pr, t in trainers.items()}
        print("first batch, identical weights: losses (total, measurement, isometry, gdl)")
        for pr, (losses, _) in first.items():
            print(f"  {pr}: " + ", ".join(f"{v:.5f}" for v in losses))
        for name in first["fp32"][1]:
            a, b = first["fp32"][1][name].double(), first["bf16"][1][name].double()
            cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            rel = float((a - b).norm() / a.norm())
            print(f"  gradient of {name}: cosine {cos:.5f}, |bf16 - fp32| / |fp32| {rel:.4f}")
        print(f"\n{args.steps} steps, same batches (total loss; s per step):")
        curves = {}
        for pr, t in trainers.items():
            t.generator.train()
            t.sensing.train()
            t0 = time.perf_counter()
            curves[pr] = [float(t.train_step(batches[i * 64:(i + 1) * 64])[0])
                          for i in range(args.steps)]
            curves[pr + " s/step"] = (time.perf_counter() - t0) / args.steps
        print("  step | fp32 | bf16")
        for i in range(args.steps):
            print(f"  {i + 1} | {curves['fp32'][i]:.4f} | {curves['bf16'][i]:.4f}")
        print(f"  s/step (wall, busy machine): fp32 {curves['fp32 s/step']:.2f}, "
              f"bf16 {curves['bf16 s/step']:.2f}")
        for pr, t in trainers.items():
            ev = t.evaluate()
            print(f"eval after {args.steps} steps, {pr}-trained (fp32 solver, first {args.eval} "
                  f"eval images): PSNR {ev['psnr']:.3f} dB, SSIM {ev['ssim']:.4f}")


if __name__ == "__main__":
    main()
