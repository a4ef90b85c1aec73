"""The training loop: data -> Algorithm 1 -> per-epoch checkpoints, logs and eval PSNR.

A run lives in one folder::

    RUN/model.pt        latest checkpoint (atomic writes; the final model when the run ends)
    RUN/log.jsonl       one JSON object per epoch: losses, eval PSNR/SSIM, steps/s, wall time
    RUN/config.json     the run's settings, for a person to read

``--resume`` reloads ``RUN/model.pt`` (weights, Adam state, step, RNG states) and continues; the
data order of each epoch depends only on (seed, epoch), so a resumed run sees the same batches as
an uninterrupted one. A resumed run must keep every setting that shapes the training (network,
solver, losses, rates, batch, seed: all but :data:`RESUME_MAY_CHANGE`); it is refused otherwise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qgen_infer.allocator import keep_freed_memory
from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from qgen_infer.errors import QgenError
from qgen_infer.metrics import psnr, ssim
from qgen_infer.models import build_generator, build_sensing, complete_config
from qgen_infer.quant import DEFAULT_GRID
from qgen_infer.signals import signals_deferred
from qgen_infer.solve import reconstruct_latent
from qgen_infer.train.config import (
    DEFAULT_LR,
    DEFAULT_SREC_DATA_PAIRS,
    DEFAULT_STEP_SIZE_LR,
    METHODS,
    RESOLVED_ELSEWHERE,
    RESUME_MAY_CHANGE,
    SENSING_LOSSES,
    TrainConfig,
    kept_checkpoint_name,
)
from qgen_infer.train.objective import SolverSettings, StepLosses, meta_learning_losses
from qgen_infer.train.precision import PRECISIONS, in_precision


def resolve_solver(cfg: TrainConfig, net: dict[str, Any]) -> SolverSettings:
    if cfg.method not in METHODS:
        raise QgenError(f"unknown method {cfg.method!r}; use one of {', '.join(METHODS)}")
    c, h, w = net["image_shape"]
    if cfg.method == "dcs":
        latent = cfg.latent_dim or 100
        sparsity = cfg.sparsity
    else:
        latent = cfg.latent_dim or (c * h * w if net["family"] == "mlp" else 512)
        sparsity = cfg.sparsity if cfg.sparsity is not None else min(100, latent // 2)
    if latent < 1:
        raise QgenError(f"latent dimension must be positive, got {latent}")
    if sparsity is not None and not 1 <= sparsity <= latent:
        raise QgenError(f"sparsity s={sparsity} must be between 1 and the latent dimension "
                        f"{latent}; lower --sparsity or raise --latent-dim")
    if cfg.steps < 1:
        raise QgenError(f"--steps must be at least 1, got {cfg.steps}")
    return SolverSettings(cfg.method, latent, sparsity, cfg.steps, cfg.project)


def network_config(cfg: TrainConfig, image_shape: list[int]) -> dict[str, Any]:
    if cfg.measurements < 1:
        raise QgenError(f"the number of measurements m must be positive, got {cfg.measurements}")
    pixels = math.prod(image_shape)
    # compressed sensing asks for m < n; past n the sensing net only grows (m = 10^11 was an
    # out-of-memory error for a 200 TB weight)
    if cfg.measurements > pixels:
        raise QgenError(f"the number of measurements m={cfg.measurements} exceeds the "
                        f"{pixels} values of one image; lower -m")
    from qgen_infer.data import family_for_shape

    family = family_for_shape(image_shape)
    try:
        return complete_config({"family": family, "image_shape": image_shape,
                                "measurements": cfg.measurements, "bits": cfg.bits,
                                "granularity": cfg.granularity,
                                "overflow_rate": cfg.overflow_rate, "grid": cfg.grid,
                                "latent_dim": 1})
    except ValueError as exc:
        raise QgenError(str(exc)) from None


@torch.no_grad()
def evaluate_reconstruction(
    generator: nn.Module,
    sensing: nn.Module,
    images: torch.Tensor,
    solver: SolverSettings,
    step_size: float,
    *,
    batch_size: int = 250,
    restarts: int = 1,
    steps: int | None = None,
    seed: int = 1234,
    on_batch: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Measure ``images`` with A, reconstruct with proximal GD, score PSNR/SSIM per image;
    ``on_batch()`` after each batch (e.g. a thread count following the load)."""
    was_training = generator.training, sensing.training
    generator.eval()
    sensing.eval()
    ps, ss, losses = [], [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        y = sensing(x)
        res = reconstruct_latent(
            y, generator, sensing, latent_dim=solver.latent_dim,
            steps=solver.steps if steps is None else steps, step_size=step_size,
            sparsity=solver.sparsity, project=solver.project, restarts=restarts, seed=seed + i,
        )
        ps.append(psnr(x, res.x))
        ss.append(ssim(x, res.x))
        losses.append(res.loss)
        if on_batch is not None:
            on_batch()
    generator.train(was_training[0])
    sensing.train(was_training[1])
    p, s = torch.cat(ps), torch.cat(ss)
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_image": p,
            "ssim_per_image": s, "loss_per_image": torch.cat(losses)}


def kept_checkpoint(run_dir: str | Path, epoch: int) -> Path:
    """Where ``--keep-epochs`` keeps the checkpoint of ``epoch`` beside the run's model.pt."""
    return Path(run_dir) / kept_checkpoint_name(epoch)


def saved_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The :class:`TrainConfig` fields a checkpoint was trained with. Options added after it was
    saved get the value that reproduces how it trained (the behaviour before the option
    existed); an empty dict for checkpoints too old to record their settings."""
    saved = ckpt.get("train", {}).get("settings")
    if not isinstance(saved, dict):
        return {}
    known = {f.name for f in fields(TrainConfig)}
    before_option = {"overflow_rate": 0.0, "grid": DEFAULT_GRID, "sensing_loss": "total",
                     "srec_data_pairs": False, "step_size_lr": saved.get("lr"), "precision": "fp32"}
    return {k: saved.get(k, before_option.get(k)) for k in known
            if k in saved or k in before_option}


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _on_cpu(obj: Any) -> Any:
    """``obj`` (tensors in nested dicts and lists, as in state dicts) with every tensor on the
    CPU: a checkpoint trained on a GPU loads anywhere (Adam's state moves back to the
    parameters' device in ``load_state_dict``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


class Trainer:
    """Runs Algorithm 1 on ``train_images`` and scores ``eval_images`` after each epoch."""

    # whether this process evaluates and writes the run folder (a data-parallel rank other
    # than 0 does neither: qgen_infer.distributed.training)
    writes_files = True

    def __init__(self, cfg: TrainConfig, train_images: torch.Tensor, eval_images: torch.Tensor,
                 *, resume: bool = False, data_description: str = "") -> None:
        if cfg.sensing_loss not in SENSING_LOSSES:
            raise QgenError(f"sensing_loss must be one of {', '.join(SENSING_LOSSES)}, got "
                            f"{cfg.sensing_loss!r}")
        if cfg.precision not in PRECISIONS:
            raise QgenError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{cfg.precision!r}")
        if cfg.lr_schedule not in ("cosine", "constant"):
            raise QgenError(f"lr_schedule must be 'cosine' or 'constant', got {cfg.lr_schedule!r}")
        if not cfg.initial_step_size > 0 or not math.isfinite(cfg.initial_step_size):
            raise QgenError(f"the initial step size must be a positive number, got "
                            f"{cfg.initial_step_size}")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        keep_freed_memory()  # reuse freed activations instead of page-faulting new ones
        # on the device once: batches are then index gathers there, no per-step copies
        self.train_images = train_images.to(self.device)
        self.eval_images = eval_images.to(self.device)
        self.out = Path(cfg.out)
        self.net = network_config(cfg, list(train_images.shape[1:]))
        if cfg.lr is None:
            cfg = self.cfg = replace(cfg, lr=DEFAULT_LR[self.net["family"]])
        if not cfg.lr > 0 or not math.isfinite(cfg.lr):
            raise QgenError(f"the learning rate must be a positive number, got {cfg.lr}")
        if cfg.step_size_lr is None:
            rate = DEFAULT_STEP_SIZE_LR[self.net["family"]]
            cfg = self.cfg = replace(cfg, step_size_lr=cfg.lr if rate is None else rate)
        if not cfg.step_size_lr > 0 or not math.isfinite(cfg.step_size_lr):
            raise QgenError(f"the step size's learning rate must be a positive number, got "
                            f"{cfg.step_size_lr}")
        if cfg.srec_data_pairs is None:
            cfg = self.cfg = replace(
                cfg, srec_data_pairs=DEFAULT_SREC_DATA_PAIRS[self.net["family"]])
        self.solver = resolve_solver(cfg, self.net)
        self.net["latent_dim"] = self.solver.latent_dim
        torch.manual_seed(cfg.seed)
        self.generator = build_generator(self.net).to(self.device)
        self.sensing = build_sensing(self.net).to(self.device)
        self.log_step_size = nn.Parameter(torch.tensor(math.log(cfg.initial_step_size),
                                                       device=self.device))
        # Two groups: log β moves at most ~its rate per Adam step, so with the network's rate
        # (2e-4 for the DCGAN) it cannot follow A_φ's output scale, which sets the right β.
        self.optimizer = torch.optim.Adam([
            {"params": [*self.generator.parameters(), *self.sensing.parameters()]},
            {"params": [self.log_step_size], "lr": cfg.step_size_lr},
        ], lr=cfg.lr)
        self.epoch = 0
        self.step = 0
        self.wall_time = 0.0
        self.rng = _seeded(cfg.seed + 1)
        self.data_description = data_description
        if resume:
            self._resume()
        elif cfg.init_from:
            self._warm_start(cfg.init_from)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, final: bool = False) -> dict[str, Any]:
        return {
            "config": self.net,
            "solver": {**asdict(self.solver),
                       "step_size": float(self.log_step_size.detach().exp())},
            "generator": _on_cpu(self.generator.state_dict()),
            "sensing": _on_cpu(self.sensing.state_dict()),
            "log_step_size": self.log_step_size.detach().cpu().clone(),
            "train": {"epochs": self.epoch, "step": self.step, "wall_time_s": self.wall_time,
                      "final": final, "data": self.data_description,
                      "settings": asdict(self.cfg)},
            "optimizer": _on_cpu(self.optimizer.state_dict()),
            "rng_state": self.rng.get_state(),
        }

    def _resume(self) -> None:
        path = self.out / "model.pt"
        ckpt = load_checkpoint(path)
        self._check_same_run(ckpt, path)
        self.generator.load_state_dict(ckpt["generator"])
        self.sensing.load_state_dict(ckpt["sensing"])
        with torch.no_grad():
            self.log_step_size.copy_(ckpt["log_step_size"])
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(_two_param_groups(ckpt["optimizer"], self.cfg))
        if "rng_state" in ckpt:
            self.rng.set_state(ckpt["rng_state"])
        t = ckpt["train"]
        self.epoch, self.step, self.wall_time = int(t["epochs"]), int(t["step"]), float(
            t["wall_time_s"])

    def _check_same_run(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse to resume ``ckpt`` under settings that would train it differently."""
        differ = []
        net = complete_config(ckpt["config"])
        differ += [(k, net.get(k), self.net.get(k)) for k in sorted({*net, *self.net})
                   if net.get(k) != self.net.get(k)]
        solver = {k: v for k, v in ckpt["solver"].items() if k != "step_size"}
        differ += [(k, solver.get(k), v) for k, v in asdict(self.solver).items()
                   if k in solver and solver[k] != v]
        saved = saved_settings(ckpt)
        differ += [(k, saved[k], getattr(self.cfg, k)) for k in sorted(saved)
                   if k not in RESUME_MAY_CHANGE | RESOLVED_ELSEWHERE
                   and saved[k] != getattr(self.cfg, k)]
        if differ:
            listed = ", ".join(f"{k}={was!r} (here {now!r})" for k, was, now in differ)
            raise QgenError(f"{path} was trained with other settings than this run's: {listed}; "
                            f"resume with the checkpoint's settings (qgen-train --resume takes "
                            f"them when the options are left out) or choose a new --out")

    def _warm_start(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        quantizer = ("bits", "granularity", "overflow_rate", "grid")
        src = {k: v for k, v in complete_config(ckpt["config"]).items() if k not in quantizer}
        dst = {k: v for k, v in self.net.items() if k not in quantizer}
        if src != dst:
            raise QgenError(f"--init-from {path}: its network differs from this run's (only the "
                            f"quantizer: bit width, granularity, overflow rate, grid, may differ)")
        self.generator.load_state_dict(ckpt["generator"])
        self.sensing.load_state_dict(ckpt["sensing"])
        with torch.no_grad():
            self.log_step_size.copy_(ckpt["log_step_size"])

    # -- the loop ----------------------------------------------------------------------------
    def learning_rate(self, epoch: int) -> float:
        """Adam's rate for ``epoch`` (0-based): a function of the epoch alone, so resuming
        continues the same schedule."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        frac = epoch / max(self.cfg.epochs, 1)
        return self.cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def _backward(self, losses: StepLosses) -> None:
        if self.cfg.sensing_loss == "total":
            losses.total.backward()
            return
        losses.total.backward(inputs=[*self.generator.parameters(), self.log_step_size],
                              retain_graph=True)
        losses.isometry.backward(inputs=list(self.sensing.parameters()))

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """One Algorithm-1 update of θ, φ and β on the batch ``x``; returns the detached losses
        [total, measurement, isometry, gdl]."""
        losses = meta_learning_losses(
            x, in_precision(self.generator, self.cfg.precision),
            in_precision(self.sensing, self.cfg.precision), self.log_step_size, self.solver,
            gdl_weight=self.cfg.gdl_weight, rng=self.rng, data_pairs=self.cfg.srec_data_pairs)
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(losses)
        self.optimizer.step()
        self.step += 1
        return torch.stack([losses.total, losses.measurement, losses.isometry,
                            losses.gdl]).detach()

    def evaluate(self) -> dict[str, Any]:
        return evaluate_reconstruction(
            self.generator, self.sensing, self.eval_images, self.solver,
            float(self.log_step_size.detach().exp()), restarts=self.cfg.eval_restarts)

    def run(self, progress: Callable[..., Any] | None = None,
            on_step: Callable[[], object] | None = None) -> dict[str, Any]:
        """Train until ``cfg.epochs``; returns the last log record. ``on_step()`` runs after
        each step (the CLIs' thread count following the load: qgen_infer.cpu_threads)."""
        if self.writes_files:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        n = self.train_images.shape[0]
        bs = min(self.cfg.batch_size, n)
        batches = n // bs
        record: dict[str, Any] = {}
        self.generator.train()
        self.sensing.train()
        while self.epoch < self.cfg.epochs:
            order = torch.randperm(n, generator=_seeded(self.cfg.seed * 1_000_003 + self.epoch))
            order = order.to(self.device)
            decay = self.learning_rate(self.epoch) / self.cfg.lr
            for group, rate in zip(self.optimizer.param_groups,
                                   (self.cfg.lr, self.cfg.step_size_lr), strict=True):
                group["lr"] = decay * rate
            sums = torch.zeros(4, device=self.device)
            threads: set[int] = set()  # on_step may change the count: the log says which ran
            t0 = time.perf_counter()
            bar = progress(total=batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                           leave=False) if progress else None
            for i in range(batches):
                threads.add(torch.get_num_threads())
                parts = self.train_step(self.train_images[order[i * bs:(i + 1) * bs]])
                if not torch.isfinite(parts).all():
                    raise QgenError(f"training diverged at step {self.step} (loss {parts.tolist()})"
                                    f"; lower --lr or the initial step size")
                sums += parts
                if on_step is not None:
                    on_step()
                if bar is not None:
                    bar.update(1)
                    if i % 10 == 0:
                        bar.set_postfix(loss=f"{parts[0]:.2f}", meas=f"{parts[1]:.2f}",
                                        beta=f"{float(self.log_step_size.detach().exp()):.3g}")
            if bar is not None:
                bar.close()
            dt = time.perf_counter() - t0
            self.wall_time += dt
            self.epoch += 1
            mean = (sums / batches).tolist()
            record = {"epoch": self.epoch, "step": self.step, "loss": mean[0],
                      "measurement": mean[1], "isometry": mean[2], "gdl": mean[3],
                      "step_size": float(self.log_step_size.detach().exp()),
                      "steps_per_s": batches / dt, "wall_time_s": self.wall_time,
                      "threads": sorted(threads)}
            if not self.writes_files:
                continue
            if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs:
                ev = self.evaluate()
                record.update(eval_psnr=ev["psnr"], eval_ssim=ev["ssim"])
            final = self.epoch >= self.cfg.epochs
            with signals_deferred():  # a Ctrl-C waits: the checkpoint and its log line, whole
                ckpt = self.checkpoint(final=final)
                save_checkpoint(self.out / "model.pt", ckpt)
                if self.epoch in self.cfg.keep_epochs:
                    save_checkpoint(kept_checkpoint(self.out, self.epoch), ckpt)
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            if progress is not None:
                msg = (f"epoch {self.epoch}: loss {mean[0]:.3f} (meas {mean[1]:.3f}, "
                       f"iso {mean[2]:.3f}, gdl {mean[3]:.3f}), {batches / dt:.1f} steps/s")
                if "eval_psnr" in record:
                    msg += (f", eval PSNR {record['eval_psnr']:.2f} dB "
                            f"SSIM {record['eval_ssim']:.3f}")
                progress.write(msg)
        return record


def _two_param_groups(state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """An optimizer state saved before log β had its own group (one group, log β last) in the
    two-group form; other states unchanged."""
    groups = state["param_groups"]
    if len(groups) != 1:
        return state
    *nets, beta = groups[0]["params"]
    return {"state": state["state"],
            "param_groups": [{**groups[0], "params": nets},
                             {**groups[0], "params": [beta], "lr": cfg.step_size_lr}]}


def models_from_checkpoint_path(path: str | Path) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(G with fake-quantized weights, A, checkpoint dict) for evaluation."""
    ckpt = load_checkpoint(path)
    g, a = build_from_checkpoint(ckpt)
    return g, a, ckpt
