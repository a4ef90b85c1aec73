"""How far each weight quantizer moves a trained 32-bit generator, before any fine-tuning.

For one 32-bit checkpoint (the CIFAR-10 SDLSS run's epoch-8 weights, where the 1-4-bit
fine-tunes start), every generator weight is quantized with each quantizer of the table and
two errors are measured:

* weight error  ``sum ||w - Q(w)||^2 / sum ||w||^2`` over the generator's weight tensors;
* output error  ``mean (G_Q(z) - G(z))^2 / var G(z)`` on the solver's random starts z
  (:func:`qgen_infer.solve.sample_latent` with the checkpoint's sparsity and projection), both
  generators with their BatchNorm statistics
  recomputed on these latents (a fine-tune re-learns them; without it the column "as loaded"
  keeps the 32-bit statistics).

1 is the error of predicting the mean image: an output error near or above 1 means the
quantized generator has lost the 32-bit function, which a fine-tune then has to re-learn.

    python paper/quantizer_error.py /work/cifar-runs/cifar10-m100-sdlss-32-bf16/model-epoch8.pt \\
        --out bench/results/cifar10-quantizer-error.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from paper_repro.provenance import stamp
from torch import nn

from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.solve import sample_latent

# (bits, overflow rate, grid): the paper's quantizers and the mid-rise option
QUANTIZERS = [(1, 0.0, "mid-tread"), (2, 0.0, "mid-tread"), (2, 0.05, "mid-tread"),
              (2, 0.0, "mid-rise"), (2, 0.05, "mid-rise"), (3, 0.0, "mid-tread"),
              (3, 0.0, "mid-rise"), (4, 0.0, "mid-tread"), (4, 0.0, "mid-rise")]


@torch.no_grad()
def _outputs(gen: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gen(z)`` with the loaded BatchNorm statistics, then with statistics recomputed on z."""
    loaded = gen.eval()(z)
    for m in gen.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the one batch
    gen.train()(z)
    return loaded, gen.eval()(z)


def _relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref) ** 2).mean() / ((ref - ref.mean()) ** 2).mean())


def measure(ckpt: dict[str, Any], z: torch.Tensor) -> list[dict[str, Any]]:
    """One row per quantizer of :data:`QUANTIZERS` for the 32-bit checkpoint ``ckpt``."""
    if int(ckpt["config"]["bits"]) != 32:
        raise SystemExit("quantizer_error: give a 32-bit checkpoint (its weights are the "
                         "ones each quantizer is applied to)")
    ref_loaded, ref = _outputs(build_from_checkpoint(ckpt)[0], z)
    rows = []
    for bits, rate, grid in QUANTIZERS:
        config = {**ckpt["config"], "bits": bits, "overflow_rate": rate, "grid": grid}
        gen = build_from_checkpoint({**ckpt, "config": config})[0]  # loading copies the weights
        err = norm = 0.0
        with torch.no_grad():
            for module in gen.modules():
                if hasattr(module, "quantized_weight"):
                    w = module.weight.float()
                    err += float(((w - module.quantized_weight()) ** 2).sum())
                    norm += float((w**2).sum())
        loaded, recomputed = _outputs(gen, z)
        rows.append({"bits": bits, "overflow_rate": rate, "grid": grid,
                     "weight_error": err / norm,
                     "output_error_loaded": _relative(loaded, ref_loaded),
                     "output_error": _relative(recomputed, ref)})
    return rows


def report(rows: list[dict[str, Any]], checkpoint: str, n: int, argv: list[str]) -> str:
    lines = [
        "# How far each quantizer moves the 32-bit generator (no fine-tuning)",
        "",
        f"Checkpoint `{checkpoint}`; {n} sparse latents. Errors relative to the 32-bit weights' "
        "energy and to the 32-bit output's variance (see `paper/quantizer_error.py`).",
        "",
        "| bits | grid | overflow rate | weight error | output error | output error, BN "
        "statistics as loaded |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        grid = "- (sign · mean\\|w\\|)" if r["bits"] == 1 else r["grid"]
        lines.append(f"| {r['bits']} | {grid} | {r['overflow_rate']:g} | "
                     f"{r['weight_error']:.3f} | {r['output_error']:.3f} | "
                     f"{r['output_error_loaded']:.3f} |")
    return "\n".join([*lines, "", *stamp(argv), "- threads: 1", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a 32-bit qgen-train checkpoint (model.pt)")
    p.add_argument("--latents", type=int, default=256, help="latents to compare outputs on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint)
    solver = ckpt["solver"]
    z = sample_latent(args.latents, int(ckpt["config"]["latent_dim"]), solver.get("sparsity"),
                      project=bool(solver.get("project", False)),
                      generator=torch.Generator().manual_seed(args.seed))
    rows = measure(ckpt, z)
    text = report(rows, args.checkpoint, args.latents,
                  sys.argv if argv is None else ["paper/quantizer_error.py", *argv])
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
