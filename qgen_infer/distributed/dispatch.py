"""One ``--backend auto`` choice per product for every rank of a sharded reconstruction.

On the CPU, ``auto`` times the packed kernels against a dense fp32 matmul the first time it
meets a product (:mod:`qgen_infer.engine.cpu_dispatch`). Ranks that each measure on a machine's
first run can choose differently (a core busy for one of them), and the two paths round
differently, so the merged result would no longer equal a single-process run bit for bit. Here
rank 0 measures every product of the job before any shard is solved, and every other rank
adopts its choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from qgen_infer.distributed.env import DistEnv, broadcast, check_all
from qgen_infer.reconstruction import SolverOptions, reconstruct

# Solver steps of the measuring run: the first step reads the random starts, the second an
# s-sparse latent, which the dispatcher keys apart (a sparse input takes the kernels' sparse path).
MEASURING_STEPS = 2


def measuring_batches(images: int, batch_size: int) -> list[int]:
    """The batch sizes the job's solve runs: full batches and the last, shorter one (shards are
    whole batches, so only the job's last batch can be shorter)."""
    sizes = [min(batch_size, images)]
    if images > batch_size and images % batch_size:
        sizes.append(images % batch_size)
    return sizes


def measure_products(model: Any, rows: Callable[[int, int], np.ndarray], images: int,
                     opts: SolverOptions, **solve: Any) -> dict[Any, Any]:
    """Run the job's batch sizes for :data:`MEASURING_STEPS` steps on its first images, so that
    the dispatcher of ``model`` meets (and measures, or finds cached) every product the job
    runs; returns its choices."""
    short = dataclasses.replace(opts, steps=min(opts.steps, MEASURING_STEPS))
    for size in measuring_batches(images, opts.batch_size):
        reconstruct(model, rows(0, size), short, **solve)
    return dict(model.backend.dispatcher.choices)


def agree_on_dispatch(env: DistEnv, model: Any, rows: Callable[[int, int], np.ndarray],
                      images: int, opts: SolverOptions, **solve: Any) -> None:
    """A collective: rank 0 measures (:func:`measure_products`), the others take its choices
    over their own. A no-op for one process and for backends that do not measure. The choices
    are keyed by machine context (CPU model, ISA, threads): ranks on another CPU model or with
    another thread count still measure their own."""
    if not env.distributed or getattr(model.backend, "dispatch", None) != "measured":
        return
    error, choices = None, None
    if env.is_main:
        try:
            choices = measure_products(model, rows, images, opts, **solve)
        except Exception as exc:  # reported by every rank together
            error = exc
    check_all(env, error)
    choices = broadcast(env, choices)
    if not env.is_main:
        model.backend.dispatcher.choices.update(choices)
