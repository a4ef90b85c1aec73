"""Algorithm 1 under DistributedDataParallel: one global batch per step, split across the ranks.

``--batch-size`` stays the *global* batch B. Each step every rank gathers the same global batch
(the epoch's order depends on the seed and the epoch only) and keeps its slice of B / W images;
every rank draws the random starts of the whole global batch from the same generator (all ranks
hold the same RNG state) and keeps the same slice. So a rank computes exactly the rows a single
process computes for those images; DDP averages the gradients of the W slice means, which is the
gradient of the global mean: W ranks follow one process's trajectory with the same global batch,
up to float rounding of the sums. A checkpoint holds one trajectory's state (weights, Adam,
RNG, step), so ``--resume`` continues at any world size whose W divides B.

Two parts of a step look beyond a rank's slice, and are made to see the whole batch as one
process does: the DCGAN generator's BatchNorm normalises with the global batch's statistics
(:mod:`.batch_norm`, all-reduced, differentiably; DDP's default would use each slice's own), and
the S-REC data-data pair (``--srec-data-pairs``) puts each image against the one before it in
the global batch, so a rank's first image is paired with the previous rank's last (every rank
holds the whole batch). Only rank 0 evaluates, writes the checkpoint, the log and prints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from qgen_infer.distributed.batch_norm import synchronise_batch_norm
from qgen_infer.distributed.env import DistEnv, check_all, device_for, join
from qgen_infer.errors import QgenError
from qgen_infer.solve import sample_latent
from qgen_infer.train.objective import meta_learning_losses
from qgen_infer.train.precision import in_precision
from qgen_infer.train.trainer import TrainConfig, Trainer


def local_batch(cfg: TrainConfig, train_images: int, world_size: int) -> int:
    """Each rank's share of the global batch; refuses what DDP cannot run as one process does."""
    if cfg.sensing_loss != "total":
        raise QgenError("--sensing-loss srec is not supported under torchrun yet (its two "
                        "backward passes per step do not fit DDP's one gradient reduction)")
    global_batch = min(cfg.batch_size, train_images)
    if global_batch % world_size:
        raise QgenError(f"the global batch {global_batch} (--batch-size) must split evenly "
                        f"across the {world_size} processes")
    return global_batch // world_size


class _AlgorithmOneStep(nn.Module):
    """The networks and the learned step size as one module whose forward is the step's
    losses, so that DDP sees one forward (with its unrolled solver) per backward."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.generator, self.sensing = trainer.generator, trainer.sensing
        self.log_step_size = trainer.log_step_size
        self.trainer = [trainer]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor, z0: torch.Tensor, pair_before: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        t = self.trainer[0]
        losses = meta_learning_losses(
            x, in_precision(self.generator, t.cfg.precision),
            in_precision(self.sensing, t.cfg.precision), self.log_step_size, t.solver,
            gdl_weight=t.cfg.gdl_weight, rng=t.rng, data_pairs=t.cfg.srec_data_pairs, z0=z0,
            pair_before=pair_before)
        return losses.total, losses.measurement, losses.isometry, losses.gdl


class DistributedTrainer(Trainer):
    """:class:`qgen_infer.train.Trainer` on every rank of a torch.distributed job (joined from
    torchrun's environment). Rank 0 alone evaluates and writes files (``writes_files``)."""

    def __init__(self, cfg: TrainConfig, train_images: torch.Tensor, eval_images: torch.Tensor,
                 *, env: DistEnv | None = None, **kwargs: Any) -> None:
        device = torch.device(cfg.device)
        self.env = env or join(device.type)
        error: BaseException | None = None
        try:  # a setting, the checkpoint to resume: agreed on before DDP's first collective
            cfg = replace(cfg, device=device_for(self.env, cfg.device))
            self.local_batch = local_batch(cfg, train_images.shape[0], self.env.world_size)
            super().__init__(cfg, train_images, eval_images, **kwargs)
        except Exception as exc:
            error = exc
        check_all(self.env, error)
        self.writes_files = self.env.is_main
        synchronise_batch_norm(self.generator)  # before DDP, which registers the modules
        step = _AlgorithmOneStep(self)
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # DDP broadcasts rank 0's weights and buffers here: every rank starts from one state
        self.step_module = DistributedDataParallel(step, device_ids=ids)

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """One update on the global batch ``x`` (the same on every rank); returns the losses
        averaged over the ranks, [total, measurement, isometry, gdl]."""
        s = self.solver
        lo = self.env.rank * self.local_batch
        rows = slice(lo, lo + self.local_batch)
        # the whole global batch's starts, as one process draws them, then this rank's rows
        z0 = sample_latent(x.shape[0], s.latent_dim, s.sparsity, project=s.project,
                           generator=self.rng, device=x.device, dtype=x.dtype)[rows]
        before = x[lo - 1:lo] if lo else x[-1:]  # the data-data pair's partner of row lo
        losses = self.step_module(x[rows], z0, before)
        self.optimizer.zero_grad(set_to_none=True)
        losses[0].backward()  # DDP averages the gradients across the ranks during it
        self.optimizer.step()
        self.step += 1
        parts = torch.stack(losses).detach()
        dist.all_reduce(parts)
        return parts / self.env.world_size
