"""Shared test helpers: tiny trained-looking checkpoints for export and engine tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "mlp": {"family": "mlp", "image_shape": [1, 6, 6], "latent_dim": 10, "measurements": 7,
            "hidden": 12, "negative_slope": 0.2},
    "dcgan": {"family": "dcgan", "image_shape": [3, 16, 16], "latent_dim": 12,
              "measurements": 9, "width": 8},
}


def make_checkpoint(path: Path, family: str = "mlp", bits: int = 4,
                    granularity: str = "tensor", seed: int = 0,
                    image_shape: list[int] | None = None) -> Path:
    """Save a ``model.pt`` whose networks took a few random SGD steps (so BatchNorm statistics and
    spectral-norm vectors are not at their initial values), with perturbed BN running stats;
    ``image_shape`` replaces the tiny default (to match a real data set's images)."""
    from qgen_infer.checkpoint import save_checkpoint
    from qgen_infer.models import build_generator, build_sensing

    torch.manual_seed(seed)
    config = {**TINY_CONFIGS[family], "bits": bits, "granularity": granularity}
    if image_shape is not None:
        config["image_shape"] = list(image_shape)
    gen, sense = build_generator(config), build_sensing(config)
    opt = torch.optim.SGD([*gen.parameters(), *sense.parameters()], lr=0.05)
    for _ in range(3):
        z = torch.randn(4, config["latent_dim"])
        x = gen(z)
        loss = (x - 0.3).pow(2).mean() + sense(x).pow(2).mean() * 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for m in gen.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
    ckpt = {
        "config": config,
        "solver": {"method": "sdlss", "sparsity": 10, "steps": 3, "project": True,
                   "step_size": 0.01},
        "generator": gen.state_dict(),
        "sensing": sense.state_dict(),
        "log_step_size": torch.tensor(-2.5),
        "train": {"epochs": 1, "step": 3, "seed": seed, "wall_time_s": 0.5},
    }
    save_checkpoint(path, ckpt)
    return path


@pytest.fixture(autouse=True)
def _no_dispatch_cost_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write the user's cpu dispatch cost table (~/.cache/qgen-infer)."""
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", "off")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_checkpoint(family, bits, granularity)`` -> path of a cached tiny ``model.pt``
    (shared by the session: read it, never modify it)."""
    cache: dict[tuple[str, int, str], Path] = {}

    def get(family: str = "mlp", bits: int = 4, granularity: str = "tensor") -> Path:
        key = (family, bits, granularity)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"ckpt-{family}-{bits}-{granularity}")
            cache[key] = make_checkpoint(folder / "model.pt", family, bits, granularity)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def packed_blob(tiny_checkpoint):
    """``packed_blob(family, bits, granularity)`` -> the bytes of that tiny checkpoint exported
    to a ``.qgen`` file (cached for the session; corrupt copies, never the cached bytes)."""
    from qgen_infer.checkpoint import load_checkpoint
    from qgen_infer.export import build_qgen_file
    from qgen_infer.format import serialize

    cache: dict[tuple[str, int, str], bytes] = {}

    def get(family: str = "mlp", bits: int = 4, granularity: str = "tensor") -> bytes:
        key = (family, bits, granularity)
        if key not in cache:
            qf, _ = build_qgen_file(load_checkpoint(tiny_checkpoint(family, bits, granularity)))
            cache[key] = serialize(qf)
        return cache[key]

    return get
