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

import os
from pathlib import Path
from typing import Any

import torch

from qgen_infer.errors import FormatError

CHECKPOINT_FORMAT = "qgen-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("config", "solver", "generator", "sensing", "log_step_size", "train")


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): an interrupted save never leaves a broken file."""
    path = Path(path)
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **ckpt}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


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
    return data


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
