"""One ``--backend auto`` choice per product for every rank of a sharded reconstruction.

On the CPU, ``auto`` times the packed kernels against a dense fp32 matmul the first time it
meets a product (:mod:`qgen_infer.engine.cpu_dispatch`). Ranks that each measure on a machine's
first run can choose differently (a core busy for one of them), and the two paths round
differently, so the merged result would no longer equal a single-process run bit for bit. Here
rank 0 measures every product of the job (its first batch, solved for real, and a short run
of any other batch size) and publishes its choices in the shard folder; the other ranks do not
wait for it: they start solving at once,
running a product whose choice the machine's cost table already holds, and wait for rank 0's
choices only at a product the table lacks (:class:`FollowerDispatcher`). After the solve every
rank's choices are compared with rank 0's (:func:`disagreements`): they can differ only when
another process rewrote the cost table during the job, and the shards solved with a differing
choice are then discarded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qgen_infer.engine.cpu_dispatch import Choice, Dispatcher, ProductKey
from qgen_infer.errors import QgenError
from qgen_infer.reconstruction import SolverOptions, reconstruct

# Solver steps of the measuring run: the first step reads the random starts, the second an
# s-sparse latent, which the dispatcher keys apart (a sparse input takes the kernels' sparse path).
MEASURING_STEPS = 2
CHOICES_FILE = "dispatch-choices.json"
POLL_SECONDS = 0.02  # how often a waiting rank looks for rank 0's choices


def measuring_batches(images: int, batch_size: int) -> list[int]:
    """The batch sizes the job's solve runs: full batches and the last, shorter one (shards are
    whole batches, so only the job's last batch can be shorter)."""
    sizes = [min(batch_size, images)]
    if images > batch_size and images % batch_size:
        sizes.append(images % batch_size)
    return sizes


def measure_products(model: Any, rows: Callable[[int, int], np.ndarray], images: int,
                     opts: SolverOptions, *, met: int | None = None, **solve: Any
                     ) -> dict[Any, Any]:
    """Run the job's batch sizes for :data:`MEASURING_STEPS` steps on its first images, so that
    the dispatcher of ``model`` meets (and measures, or finds cached) every product the job
    runs; returns its choices. ``met``: a batch size a real solve has just run (its products
    are known), not run again."""
    short = dataclasses.replace(opts, steps=min(opts.steps, MEASURING_STEPS))
    for size in measuring_batches(images, opts.batch_size):
        if size != met:
            reconstruct(model, rows(0, size), short, **solve)
    return dict(model.backend.dispatcher.choices)


def measures(model: Any) -> bool:
    """Whether ``model``'s backend chooses its products by measuring (the cpu ``auto``)."""
    return getattr(model.backend, "dispatch", None) == "measured"


def _to_json(choices: dict[tuple[str, ProductKey], Choice]) -> list[dict[str, Any]]:
    return [{"context": context, "key": dataclasses.asdict(key), "packed_s": c.packed_s,
             "dense_s": c.dense_s, "path": c.path} for (context, key), c in choices.items()]


def _from_json(rows: list[dict[str, Any]]) -> dict[tuple[str, ProductKey], Choice]:
    out = {}
    for row in rows:
        key = ProductKey(**row["key"])
        out[(row["context"], key)] = Choice(key, row["packed_s"], row["dense_s"], row["path"],
                                            "rank 0")
    return out


def publish_choices(folder: Path, model: Any | None, error: BaseException | None) -> None:
    """Rank 0: its dispatcher's choices (or that its measuring failed) for the other ranks."""
    from qgen_infer.arrays import write_text_atomic

    body = ({"error": str(error) or type(error).__name__} if error is not None
            else {"choices": _to_json(model.backend.dispatcher.choices)})
    write_text_atomic(folder / CHOICES_FILE, json.dumps(body) + "\n")


def _wait_for_choices(folder: Path) -> dict[tuple[str, ProductKey], Choice]:
    path = folder / CHOICES_FILE
    while not path.is_file():  # rank 0 always writes it, also when its measuring fails
        time.sleep(POLL_SECONDS)
    body = json.loads(path.read_text())
    if "error" in body:
        raise QgenError("rank 0 could not measure the products' paths; see its error")
    return _from_json(body["choices"])


class FollowerDispatcher(Dispatcher):
    """A rank other than 0: a choice comes from this process, the cost table, or rank 0's
    published choices (waited for, once, at the first product the table lacks), so every
    product it runs takes the path rank 0 took or the table's; only a product rank 0's
    measuring run did not meet is measured here."""

    def __init__(self, base: Dispatcher, folder: Path) -> None:
        super().__init__(base.table, base.measure)
        self.choices = base.choices
        self.folder = folder
        self.leader: dict[tuple[str, ProductKey], Choice] | None = None

    def known(self, context: str, key: ProductKey) -> Choice | None:
        choice = super().known(context, key)
        if choice is not None:
            return choice
        if self.leader is None:
            self.leader = _wait_for_choices(self.folder)
        choice = self.leader.get((context, key))
        if choice is not None:
            self.choices[(context, key)] = choice
        # else: a product rank 0's short run did not meet: measured here, and compared with
        # rank 0's after the solve (disagreements)
        return choice


def follow(model: Any, folder: Path) -> None:
    """Make ``model``'s dispatcher a :class:`FollowerDispatcher` of rank 0's ``folder``."""
    backend = model.backend
    backend.dispatcher = FollowerDispatcher(backend.dispatcher, folder)


def paths(model: Any) -> dict[str, str]:
    """``model``'s dispatcher choices as ``{"context | product": path}`` (picklable)."""
    if not measures(model):
        return {}
    return {f"{context} | {key.text()}": c.path
            for (context, key), c in model.backend.dispatcher.choices.items()}


def disagreements(everyone: list[dict[str, str]]) -> list[int]:
    """The ranks whose choices differ from rank 0's for a product both ran."""
    lead = everyone[0]
    return [rank for rank, mine in enumerate(everyone)
            if any(lead.get(product, path) != path for product, path in mine.items())]
