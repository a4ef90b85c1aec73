"""What a training run is set by: :class:`TrainConfig`, the per-family defaults and the rule
of what a resumed run may change. No torch here: ``qgen-train --help`` reads these defaults
without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("sdlss", "dcs")
# What trains A_φ. "total": the whole loss of Eq. (3), as DCS's code does (its measurement term
# pulls A(x) and A(G(ẑ)) together, which A can also achieve by shrinking the differences between
# all images). "srec": the S-REC loss alone, as Algorithm 1 of the paper writes the φ update.
SENSING_LOSSES = ("total", "srec")
# Adam's default rate per network family: at 1e-3 the DCGAN generator collapses to one
# z-independent image, at 2e-4 (DCGAN's usual rate) it does not (bench/results/colour-table1.md).
DEFAULT_LR = {"mlp": 1e-3, "dcgan": 2e-4}
# Adam's rate for log β per family (None: the network's): Adam moves log β by about its rate per
# step, so the DCGAN's 2e-4 would pin β near its start (bench/results/colour-sdlss-1v32-14ep.md).
DEFAULT_STEP_SIZE_LR: dict[str, float | None] = {"mlp": None, "dcgan": 1e-2}
# Data-data pairs in the S-REC loss per family: without them the 32x32 sensing net maps all data
# patches close together (bench/results/colour-sdlss-1v32-14ep-datapairs.md); the MLPs keep DCS's.
DEFAULT_SREC_DATA_PAIRS: dict[str, bool] = {"mlp": False, "dcgan": True}
# What a resumed run may change: where and how fast it runs, how long, how it is evaluated, and
# what only acts at step 0. Every other setting shapes the trajectory, and resuming under another
# value would silently splice two runs into one checkpoint.
RESUME_MAY_CHANGE = frozenset({"out", "epochs", "device", "threads", "eval_every",
                               "eval_restarts", "data_root", "initial_step_size", "init_from",
                               "keep_epochs"})
# Of those, what --resume never takes from the checkpoint: where this run happens.
RESUME_LOCAL = frozenset({"out", "device", "threads", "init_from"})
# The network (bits, measurements, ...) and solver (method, latent, s, T) are compared in their
# resolved form, from the checkpoint's "config" and "solver", so that a default and the same
# value given explicitly agree.
RESOLVED_ELSEWHERE = frozenset({"bits", "granularity", "overflow_rate", "grid", "measurements",
                                "method", "latent_dim", "sparsity", "steps", "project"})


def kept_checkpoint_name(epoch: int) -> str:
    """The file ``--keep-epochs`` keeps an epoch's checkpoint in, beside the run's model.pt."""
    return f"model-epoch{epoch}.pt"


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the checkpoint and config.json)."""

    out: str = "runs/model"
    dataset: str | None = None  # None: the embedded default
    data_root: str | None = None
    eval_size: int | None = None
    method: str = "sdlss"
    bits: int = 32
    granularity: str = "tensor"
    overflow_rate: float = 0.0  # LinearQuantize's clipped fraction (bits 2..4); 0: range = max|w|
    grid: str = "mid-tread"  # bits 2..4: "mid-tread" (the paper's) or "mid-rise" (symmetric)
    measurements: int = 25
    latent_dim: int | None = None  # default: image size (SDLSS, MLP), 512 (SDLSS, DCGAN), 100 (DCS)
    sparsity: int | None = None  # default: 100 for SDLSS (capped at latent_dim // 2); None for DCS
    steps: int = 3
    project: bool = True
    initial_step_size: float = 0.01
    epochs: int = 100
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR of the network family
    lr_schedule: str = "cosine"  # "cosine": decay to lr/10 over the run; "constant"
    step_size_lr: float | None = None  # Adam's rate for log β; None: DEFAULT_STEP_SIZE_LR
    sensing_loss: str = "total"  # what trains φ: "total" (Eq. 3, as DCS) or "srec" (L_A alone)
    srec_data_pairs: bool | None = None  # data-data pairs in L_A; None: DEFAULT_SREC_DATA_PAIRS
    gdl_weight: float = 0.1
    seed: int = 0
    threads: int | None = None
    init_from: str | None = None  # warm start θ, φ, β from another checkpoint (e.g. 32-bit)
    # epochs whose checkpoint is also kept as model-epoch{E}.pt (model.pt moves on), e.g. the
    # 32-bit state that quantized runs fine-tune from while the 32-bit run goes on
    keep_epochs: tuple[int, ...] = ()
    eval_every: int = 1
    eval_restarts: int = 1
    device: str = "cpu"  # where θ, φ, β and the images live ("cpu", "cuda", "cuda:1", ...)
    precision: str = "fp32"  # what the networks compute in while training: "fp32" or "bf16"
