#!/usr/bin/env python
"""What one solver step launches, without a GPU: the torch operators (logged by a dispatch mode)
and the Triton kernel launches of one eager proximal-GD step, packed generator (Triton backend,
run by Triton's interpreter) against the same weights as dense torch layers.

    python bench/count_step_kernels.py --model models/mnist-m25-1bit.qgen

On a GPU every non-view operator and every launch is a kernel, so the counts are the step's
kernels (and a CUDA graph's nodes); view-like operators (``view``, ``t``, ``detach``, ...) are
listed apart. The proximal update itself is left out: it is the same code in both variants.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels are interpreted

import argparse  # noqa: E402
import collections  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import qgen_infer  # noqa: E402
from qgen_infer.solve.proximal import measurement_loss  # noqa: E402

VIEWS = {"view", "t", "detach", "expand", "unsqueeze", "lift_fresh", "reshape", "transpose",
         "_unsafe_view", "as_strided"}


class OperatorLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "qgen_infer":  # our custom ops: counted as their Triton launches
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_triton_launches() -> collections.Counter[str]:
    """Patch the interpreter's launcher to count launches per kernel name."""
    from triton.runtime.interpreter import InterpretedFunction

    launches: collections.Counter[str] = collections.Counter()
    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        launches[self.fn.__name__] += 1
        return run(self, *args, **kwargs)

    InterpretedFunction.run = counted
    return launches


def gradient_step(generator, sensing, y: torch.Tensor, z0: torch.Tensor) -> None:
    z = z0.detach().requires_grad_(True)
    loss = measurement_loss(y, sensing(generator(z)))
    torch.autograd.grad(loss.sum(), z)


def main() -> None:
    from qgen_infer.engine.dense_baseline import dense_generator

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/mnist-m25-1bit.qgen")
    p.add_argument("--batch", type=int, default=20)
    args = p.parse_args()
    model = qgen_infer.load(args.model, backend="triton")
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(args.batch, int(model.config["measurements"]), generator=gen)
    z0 = torch.randn(args.batch, int(model.config["latent_dim"]), generator=gen)
    launches = count_triton_launches()
    gradient_step(model.generator, model.sensing, y, z0)  # warm-up: first launches compile
    for name, generator in (("packed (triton)", model.generator),
                            ("dense torch", dense_generator(model))):
        launches.clear()
        with OperatorLog() as log:
            gradient_step(generator, model.sensing, y, z0)
        ops = {k: v for k, v in log.counts.items() if k not in VIEWS}
        views = sum(v for k, v in log.counts.items() if k in VIEWS)
        print(f"{name}: {sum(ops.values())} operators + {sum(launches.values())} Triton "
              f"launches = {sum(ops.values()) + sum(launches.values())} kernels "
              f"({views} view-like operators not counted)")
        print("   operators:", ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(),
                                                                      key=lambda kv: -kv[1])))
        if launches:
            print("   launches:", ", ".join(f"{k} x{v}" for k, v in launches.items()))


if __name__ == "__main__":
    main()
