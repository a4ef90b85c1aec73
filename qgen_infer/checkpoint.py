"""The training checkpoint ``model.pt``: config, fp32 master weights, φ, step size, metadata.

Layout (a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(path, weights_only=True)`` reads it without executing any pickle)::

    {
      "format": "qgen-checkpoint", "version": 1,
      "config":    network config (qgen_infer.models; includes "bits" and "granularity"),
      "solver":    {"method": "sdlss"|"dcs", "sparsity": int|None, "steps": int,
                    "project": bool, "step_size": float},
      "generator": G's state_dict (fp32 master weights, BatchNorm buffers),
      "sensing":   A_φ's state_dict (spectral-norm parametrisations included for conv nets),
      "log_step_size": 0-d tensor (the learned latent step size β = exp(log_step_size)),
      "train":     {"epochs": int, "step": int, "seed": int, "wall_time_s": float, ...},
      "optimizer": optimizer state_dict (only needed by --resume; may be absent),
    }
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from qgen_infer.atomic import write_atomic
from qgen_infer.errors import FormatError
from qgen_infer.format.metadata import TRAINING, check_model_description, check_object
from qgen_infer.limits import MAX_STEP_SIZE

CHECKPOINT_FORMAT = "qgen-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("config", "solver", "generator", "sensing", "log_step_size", "train")


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): an interrupted save never leaves a broken file."""
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **ckpt}
    write_atomic(path, lambda fh: torch.save(data, fh))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; malformed input is a :class:`FormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{str(path)!r} is not a readable qgen checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{str(path)!r} is not a qgen checkpoint (made by qgen-train)")
    if data.get("version") != CHECKPOINT_VERSION:
        raise FormatError(f"{str(path)!r} has checkpoint version {data.get('version')!r}; "
                          f"this qgen-infer reads version {CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise FormatError(f"{str(path)!r} lacks {', '.join(missing)}")
    try:
        check_checkpoint(data)
    except FormatError as exc:
        raise FormatError(f"{str(path)!r}: {exc}") from None
    return data


def _check_state(state: Any, what: str) -> None:
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise FormatError(f"checkpoint {what} must map names to tensors")
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FormatError(f"checkpoint {what} tensor {name!r} holds NaN or infinite values")


def check_checkpoint(data: dict[str, Any]) -> None:
    """Every entry a tool reads, checked before use: the config and solver against the model
    description's schema (as in a ``.qgen`` file), the learned step size, the training record,
    and every weight finite."""
    check_model_description(data["config"], data["solver"], "checkpoint")
    log_step = data["log_step_size"]
    if not isinstance(log_step, torch.Tensor) or log_step.numel() != 1 \
            or not log_step.is_floating_point():
        raise FormatError("checkpoint log_step_size must be a one-element float tensor, got "
                          f"{type(log_step).__name__}")
    step = float(log_step.double().exp())
    if not (math.isfinite(step) and 0 < step <= MAX_STEP_SIZE):
        raise FormatError(f"checkpoint step size exp({float(log_step)}) must be a positive "
                          f"number up to {MAX_STEP_SIZE:g}")
    check_object(data["train"], TRAINING, "checkpoint train", allow_unknown=True)
    _check_state(data["generator"], "generator")
    _check_state(data["sensing"], "sensing")


def build_from_checkpoint(ckpt: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Rebuild (G_θ, A_φ) in eval mode with the checkpoint's weights; G fake-quantizes its master
    weights to the trained bit width on every forward pass."""
    from qgen_infer.models import build_generator, build_sensing

    try:
        gen = build_generator(ckpt["config"])
        sense = build_sensing(ckpt["config"])
        gen.load_state_dict(ckpt["generator"])
        sense.load_state_dict(ckpt["sensing"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise FormatError(f"checkpoint weights do not match its config ({first})") from None
    return gen.eval(), sense.eval()
