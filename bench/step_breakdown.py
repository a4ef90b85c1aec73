"""Where one solver step goes: per part, per backend, on a shipped MNIST model (issue 22).

One step of ``z <- P_s(z - beta grad_z ||y - A(G(z))||^2)`` on a batch is cut at the image
``x = G(z)`` into the parts below, each timed on its own (the autograd graph split at ``x`` runs
the same operators as the solver's one graph):

* G forward, A forward, residual + loss, A input-gradient (``d loss / d x``, through the loss),
  G input-gradient (``d x / d z`` applied to it), the proximal update;
* for reference: A's GEMMs alone (``addmm`` forward, ``mm`` input gradient, same shapes), so
  that the epilogue / allocation share of A is their difference;
* the whole step as the solver runs it (``proximal_gradient_descent``, steps = 1, no final
  evaluation), whose time the parts should add up to, and, on the cpu backend, as
  ``reconstruct`` runs it there (``engine/cpu_mlp_step.py``: the same operations without
  autograd).

Backends are interleaved round by round in one process (the machine is shared); medians of
``--rounds`` rounds of ``--reps`` repetitions each are reported in ms per step, batch 256, by
the process's CPU time (``--clock cpu``, the default: with one thread it is the step's own time,
not the time other processes held the core) or wall time.

    OMP_NUM_THREADS=1 python bench/step_breakdown.py --bits 1 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import qgen_infer
from qgen_infer.engine.cpu_mlp_step import CpuMlpSolver
from qgen_infer.reconstruction import _networks
from qgen_infer.solve import sample_latent
from qgen_infer.solve.proximal import (
    measurement_loss,
    proximal_gradient_descent,
    proximal_step,
)

REPO = Path(__file__).resolve().parents[1]
PARTS = ("G forward", "A forward", "residual + loss", "A input-gradient", "G input-gradient",
         "proximal update", "sum of parts", "whole step (solver)", "whole step (engine)",
         "A GEMMs only, forward", "A GEMMs only, input-gradient")


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def _timed(fn: Callable[[], object], reps: int) -> float:
    t0 = _clock()
    for _ in range(reps):
        fn()
    return (_clock() - t0) / reps * 1e3


def step_parts(model: object, y: torch.Tensor, z: torch.Tensor, reps: int,
               precision: str = "fp32") -> dict[str, float]:
    """ms per repetition of each part of one solver step (see the module docstring)."""
    g_net, a_net = _networks(model, precision)
    sv = model.solver  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    with torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        x = g_net(zg)
        xd = x.detach().requires_grad_(True)
        y_hat = a_net(xd)
        loss = measurement_loss(y, y_hat)
        (gx,) = torch.autograd.grad(loss.sum(), xd)

        def g_forward() -> object:
            return g_net(z.detach().requires_grad_(True))

        def a_forward() -> object:
            return a_net(xd)

        def residual() -> object:
            return measurement_loss(y, y_hat).sum()

        def a_grad() -> object:
            return torch.autograd.grad(measurement_loss(y, a_net(xd)).sum(), xd)

        def g_grad() -> object:
            return torch.autograd.grad(g_net(zg), zg, gx)

        out["G forward"] = _timed(g_forward, reps)
        out["A forward"] = _timed(a_forward, reps)
        out["residual + loss"] = _timed(residual, reps)
        # the input-gradients are timed with their forward (autograd frees the graph), minus it
        out["A input-gradient"] = _timed(a_grad, reps) - out["A forward"] - out["residual + loss"]
        out["G input-gradient"] = _timed(g_grad, reps) - out["G forward"]
    with torch.no_grad():
        gz = torch.randn_like(z) * 1e-2
        out["proximal update"] = _timed(lambda: proximal_step(
            z, gz, sv["step_size"], sv["sparsity"], sv["project"]), reps)
    out["sum of parts"] = sum(out[p] for p in PARTS[:6])
    # the solver ends with x = G(z) even without a final loss: that forward is not the step's
    out["whole step (solver)"] = _timed(lambda: proximal_gradient_descent(
        y, g_net, a_net, z, steps=1, step_size=sv["step_size"], sparsity=sv["sparsity"],
        project=sv["project"], final_loss=False), reps) - out["G forward"]
    if precision == "fp32" and CpuMlpSolver.supports(model):
        # what reconstruct() runs on the cpu backend: run() ends with G, A and the loss
        solver = CpuMlpSolver(model, step_size=sv["step_size"], sparsity=sv["sparsity"],
                              project=sv["project"])
        out["whole step (engine)"] = _timed(lambda: solver.run(y, z, 1), reps) - (
            out["G forward"] + out["A forward"] + out["residual + loss"])
    if model.backend.name == "reference" and precision == "fp32":  # type: ignore[attr-defined]
        linears = [m for m in a_net.modules() if isinstance(m, torch.nn.Linear)]
        acts = [xd.detach().flatten(1)]
        for lin in linears:
            acts.append(torch.addmm(lin.bias, acts[-1], lin.weight.t()))
        grads = [torch.randn_like(a) for a in acts[1:]]
        pairs = list(zip(linears, acts, strict=False))  # acts has one more: A's output
        out["A GEMMs only, forward"] = _timed(lambda: [
            torch.addmm(lin.bias, a, lin.weight.t()) for lin, a in pairs], reps)
        out["A GEMMs only, input-gradient"] = _timed(lambda: [
            g @ lin.weight for lin, g in zip(linears, grads, strict=True)], reps)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=1)
    p.add_argument("--backends", nargs="+", default=["reference", "auto"],
                   help="NAME@bf16: that backend with precision bf16 (the CPU: A in bf16)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                   help="cpu: the process's CPU time (one thread: robust to other processes "
                        "taking the core, which wall time on a shared machine is not)")
    args = p.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    path = REPO / "models" / f"mnist-m25-{args.bits}bit.qgen"
    models = {b: qgen_infer.load(path, backend=b.split("@")[0]) for b in args.backends}
    precision = {b: b.split("@")[1] if "@" in b else "fp32" for b in args.backends}
    first = models[args.backends[0]]
    cfg, sv = first.config, first.solver
    rng = torch.Generator().manual_seed(0)
    z = sample_latent(args.batch, cfg["latent_dim"], sv["sparsity"], project=sv["project"],
                      generator=rng)
    with torch.no_grad():  # measurements of images the model can make: a realistic residual
        y = first.sensing(first.generator(sample_latent(
            args.batch, cfg["latent_dim"], sv["sparsity"], project=True, generator=rng)))
    for m in models.values():  # warm-up: thread pools, auto's cost measurements
        qgen_infer.reconstruct(m, y.numpy(), batch_size=args.batch)
    for b, m in models.items():
        step_parts(m, y, z, 2, precision[b])
    runs: dict[str, dict[str, list[float]]] = {b: defaultdict(list) for b in args.backends}
    for rnd in range(args.rounds):
        for b in args.backends if rnd % 2 == 0 else args.backends[::-1]:
            for part, ms in step_parts(models[b], y, z, args.reps, precision[b]).items():
                runs[b][part].append(ms)
    isa = getattr(models.get("auto", first).backend, "isa", "-")
    print(f"{args.bits}-bit, batch {args.batch}, {args.threads} thread(s), kernels' ISA {isa}, "
          f"torch {torch.backends.cpu.get_cpu_capability()}, {args.clock} clock, "
          f"load {os.getloadavg()[0]:.1f}; "
          f"median of {args.rounds} rounds x {args.reps} reps, ms per step")
    others = args.backends[1:]
    print("| part | " + " | ".join(args.backends) + " | "
          + " | ".join(f"{args.backends[0]} / {b}" for b in others) + " |")
    print("| --- |" + " ---: |" * (len(args.backends) + len(others)))
    for part in PARTS:
        vals = [statistics.median(runs[b][part]) if runs[b].get(part) else float("nan")
                for b in args.backends]
        cells = ["–" if np.isnan(v) else f"{v:.2f}" for v in vals]
        cells += ["–" if np.isnan(vals[0] / v) else f"{vals[0] / v:.2f}x" for v in vals[1:]]
        print(f"| {part} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
