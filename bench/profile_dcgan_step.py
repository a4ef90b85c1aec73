#!/usr/bin/env python
"""Where one DCGAN reconstruction step's time goes, packed generator against dense fp32: per
generator layer (forward; input gradient), the fp32 sensing net A (forward; input gradient) and
the whole step ``z -> G -> A -> loss -> grad z``, each the best of ``--repeats`` calls in thread
CPU time (``time.thread_time``: on a shared machine, other processes' time slices do not enter).

    python bench/profile_dcgan_step.py --bits 1 [--images 64] [--threads 1]

The model is ``bench/time_dcgan_reconstruct.py``'s (paper-size DCGAN, exported from initialised
networks); ``fp32`` is the same file's weights as dense torch layers (oneDNN convolutions), each
dense layer timed together with its activation (the packed layer fuses it). "rest" is the step
minus G and A: the loss, autograd's bookkeeping, the copies between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from time_dcgan_reconstruct import dcgan_file
from torch import nn

import qgen_infer
from qgen_infer.engine.dense_baseline import dense_generator


def best_thread_time(fn: Callable[[], object], repeats: int) -> float:
    """Fewest thread CPU seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def layer_blocks(generator: nn.Sequential) -> list[tuple[str, nn.Sequential]]:
    """The generator's layers, a dense layer grouped with its ``<name>_act`` activation."""
    blocks: list[tuple[str, list[nn.Module]]] = []
    for name, mod in generator.named_children():
        if name.endswith("_act") and blocks and blocks[-1][0] == name[:-4]:
            blocks[-1][1].append(mod)
        else:
            blocks.append((name, [mod]))
    return [(name, nn.Sequential(*mods)) for name, mods in blocks]


def forward_backward_times(block: nn.Module, x: torch.Tensor, repeats: int
                           ) -> tuple[float, float, torch.Tensor]:
    """(forward s, input-gradient s, output) of ``block`` on ``x``."""
    inp = x.detach().requires_grad_(True)
    out = block(inp)
    grad_out = torch.randn_like(out)
    fwd = best_thread_time(lambda: block(inp), repeats)
    bwd = best_thread_time(
        lambda: torch.autograd.grad(out, inp, grad_out, retain_graph=True), repeats)
    return fwd, bwd, out.detach()


def profile(model: qgen_infer.QgenModel, z: torch.Tensor, y: torch.Tensor, repeats: int
            ) -> dict[str, tuple[float, float]]:
    """Seconds per part: layer name -> (forward, input gradient); "sensing A"; "step"."""
    rows: dict[str, tuple[float, float]] = {}
    x = z
    for name, block in layer_blocks(model.generator):
        fwd, bwd, x = forward_backward_times(block, x, repeats)
        rows[name] = (fwd, bwd)
    rows["sensing A"] = forward_backward_times(model.sensing, x, repeats)[:2]

    def step() -> torch.Tensor:
        zz = z.detach().requires_grad_(True)
        loss = ((model.sensing(model.generator(zz)) - y) ** 2).sum()
        return torch.autograd.grad(loss, zz)[0]

    rows["step"] = (best_thread_time(step, repeats), 0.0)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=1)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default="cpu", help="the packed variant's backend")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        packed = qgen_infer.load(dcgan_file(Path(tmp), args.bits), backend=args.backend)
    dense = dataclasses.replace(packed, generator=dense_generator(packed))
    z = torch.randn(args.images, packed.config["latent_dim"])
    y = torch.randn(args.images, packed.config["measurements"])
    results = {"fp32": profile(dense, z, y, args.repeats),
               args.backend: profile(packed, z, y, args.repeats)}
    print(f"{args.bits}-bit DCGAN step, batch {args.images}, {args.threads} thread(s), "
          f"ms of thread CPU time (best of {args.repeats})")
    print(f"| part | fp32 fwd | fp32 grad | {args.backend} fwd | {args.backend} grad "
          "| fp32 / packed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    totals = {v: [0.0, 0.0] for v in results}
    for part in results["fp32"]:
        if part == "step":
            continue
        (df, db), (pf, pb) = results["fp32"][part], results[args.backend][part]
        if part != "sensing A":
            for v, (f, b) in (("fp32", (df, db)), (args.backend, (pf, pb))):
                totals[v][0] += f
                totals[v][1] += b
        print(f"| {part} | {df * 1e3:.2f} | {db * 1e3:.2f} | {pf * 1e3:.2f} | {pb * 1e3:.2f} | "
              f"{(df + db) / max(pf + pb, 1e-12):.2f}x |")
    (df, db), (pf, pb) = totals["fp32"], totals[args.backend]
    print(f"| **generator** | {df * 1e3:.2f} | {db * 1e3:.2f} | {pf * 1e3:.2f} | "
          f"{pb * 1e3:.2f} | {(df + db) / (pf + pb):.2f}x |")
    sd, sp = results["fp32"]["step"][0], results[args.backend]["step"][0]
    ad, ap = (sum(results[v]["sensing A"]) for v in ("fp32", args.backend))
    print(f"| **whole step** | {sd * 1e3:.2f} | | {sp * 1e3:.2f} | | {sd / sp:.2f}x |")
    print(f"| rest (step - G - A) | {(sd - df - db - ad) * 1e3:.2f} | | "
          f"{(sp - pf - pb - ap) * 1e3:.2f} | | |")


if __name__ == "__main__":
    main()
