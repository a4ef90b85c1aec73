"""The generator G_θ and the sensing network A_φ, rebuilt from one plain config dict.

A config is JSON-serialisable (it travels inside checkpoints and ``.qgen`` files)::

    {"family": "mlp", "image_shape": [1, 28, 28], "latent_dim": 784, "measurements": 25,
     "hidden": 500, "negative_slope": 0.2, "bits": 4, "granularity": "tensor"}

    {"family": "dcgan", "image_shape": [3, 32, 32], "latent_dim": 100, "measurements": 100,
     "width": 64, "bits": 1, "granularity": "channel"}

Generators are ``nn.Sequential`` of named, well-known layers (``QLinear``, ``QConvTranspose2d``,
``QConv2d``, ``BatchNorm2d``, activations, ``Reshape``) so that the exporter can walk them and
fuse each weight layer with the BatchNorm and activation that follow it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from qgen_infer.models.layers import QConv2d, QConvTranspose2d, QLinear, Reshape
from qgen_infer.quant import DEFAULT_GRID, QuantSpec

FAMILIES = ("mlp", "dcgan")

MLP_DEFAULTS: dict[str, Any] = {
    "family": "mlp",
    "image_shape": [1, 28, 28],
    "latent_dim": 784,
    "measurements": 25,
    "hidden": 500,
    "negative_slope": 0.2,
    "bits": 32,
    "granularity": "tensor",
    "overflow_rate": 0.0,
    "grid": DEFAULT_GRID,
}

DCGAN_DEFAULTS: dict[str, Any] = {
    "family": "dcgan",
    "image_shape": [3, 32, 32],
    "latent_dim": 100,
    "measurements": 100,
    "width": 64,
    "sensing_slope": 0.1,
    "bits": 32,
    "granularity": "tensor",
    "overflow_rate": 0.0,
    "grid": DEFAULT_GRID,
}


class ConfigError(ValueError):
    """A network config that cannot describe a network."""


def quant_spec(cfg: dict[str, Any], bits: int | None = None,
               granularity: str | None = None) -> QuantSpec:
    """The generator's quantizer from a completed config (``bits``/``granularity`` override)."""
    return QuantSpec(int(cfg["bits"] if bits is None else bits),
                     cfg["granularity"] if granularity is None else granularity,
                     overflow_rate=float(cfg.get("overflow_rate", 0.0)),
                     grid=cfg["grid"])


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults for the config's family and validate it; returns a new dict."""
    family = config.get("family", "mlp")
    if family not in FAMILIES:
        raise ConfigError(f"unknown network family {family!r}; expected one of {FAMILIES}")
    cfg = dict(MLP_DEFAULTS if family == "mlp" else DCGAN_DEFAULTS)
    cfg.update(config)
    cfg["image_shape"] = [int(v) for v in cfg["image_shape"]]
    if len(cfg["image_shape"]) != 3 or min(cfg["image_shape"]) < 1:
        raise ConfigError(f"image_shape must be [C, H, W] with positive sizes, "
                          f"got {cfg['image_shape']}")
    for key in ("latent_dim", "measurements"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]}")
        cfg[key] = int(cfg[key])
    quant_spec(cfg)  # validates bits, granularity, overflow rate and grid
    if family == "dcgan":
        c, h, w = cfg["image_shape"]
        if h != w or h < 8 or 2 ** round(math.log2(h)) != h:
            raise ConfigError(f"the DCGAN generator makes square power-of-two images of side >= 8, "
                              f"got {h}x{w}")
    return cfg


def image_numel(cfg: dict[str, Any]) -> int:
    c, h, w = cfg["image_shape"]
    return c * h * w


def _mlp_generator(cfg: dict[str, Any], q: QuantSpec) -> nn.Sequential:
    hidden, slope = int(cfg["hidden"]), float(cfg["negative_slope"])
    return nn.Sequential(OrderedDict([
        ("fc1", QLinear(cfg["latent_dim"], hidden, quant=q)),
        ("act1", nn.LeakyReLU(slope)),
        ("fc2", QLinear(hidden, hidden, quant=q)),
        ("act2", nn.LeakyReLU(slope)),
        ("fc3", QLinear(hidden, image_numel(cfg), quant=q)),
        ("out", nn.Tanh()),
        ("reshape", Reshape(*cfg["image_shape"])),
    ]))


def _mlp_sensing(cfg: dict[str, Any]) -> nn.Sequential:
    hidden, slope = int(cfg["hidden"]), float(cfg["negative_slope"])
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(image_numel(cfg), hidden)),
        ("act1", nn.LeakyReLU(slope)),
        ("fc2", nn.Linear(hidden, hidden)),
        ("act2", nn.LeakyReLU(slope)),
        ("fc3", nn.Linear(hidden, cfg["measurements"])),
    ]))


def _dcgan_generator(cfg: dict[str, Any], q: QuantSpec) -> nn.Sequential:
    c, side, _ = cfg["image_shape"]
    ups = int(math.log2(side)) - 2  # 4x4 -> side, doubling each time
    width = int(cfg["width"])
    ch = width * min(2**ups, 8)  # 4x4x512 for width 64, halving per upsampling
    layers: list[tuple[str, nn.Module]] = [
        ("fc", QLinear(cfg["latent_dim"], ch * 16, bias=False, quant=q)),
        ("reshape", Reshape(ch, 4, 4)),
        ("bn0", nn.BatchNorm2d(ch)),
        ("act0", nn.ReLU()),
    ]
    for i in range(1, ups + 1):
        out = max(ch // 2, 1)
        layers += [
            (f"up{i}", QConvTranspose2d(ch, out, 4, stride=2, padding=1, bias=False, quant=q)),
            (f"bn{i}", nn.BatchNorm2d(out)),
            (f"act{i}", nn.ReLU()),
        ]
        ch = out
    layers += [("conv_out", QConv2d(ch, c, 3, padding=1, quant=q)), ("out", nn.Tanh())]
    return nn.Sequential(OrderedDict(layers))


def _dcgan_sensing(cfg: dict[str, Any], spectral_norm: bool) -> nn.Sequential:
    c, side, _ = cfg["image_shape"]
    slope = float(cfg["sensing_slope"])
    sn = _spectral_norm if spectral_norm else (lambda m: m)
    channels = [64, 64, 128, 128, 256, 256, 512]
    layers: list[tuple[str, nn.Module]] = []
    cin = c
    for i, cout in enumerate(channels):
        k, s = (3, 1) if i % 2 == 0 else (4, 2)
        layers += [(f"conv{i + 1}", sn(nn.Conv2d(cin, cout, k, stride=s, padding=1))),
                   (f"act{i + 1}", nn.LeakyReLU(slope))]
        cin = cout
    out_side = side // 8
    layers += [("flatten", nn.Flatten()),
               ("fc", nn.Linear(cin * out_side * out_side, cfg["measurements"]))]
    return nn.Sequential(OrderedDict(layers))


def build_generator(config: dict[str, Any]) -> nn.Sequential:
    """G_θ for ``config``; its weights are fake-quantized to ``config["bits"]`` in forward."""
    cfg = complete_config(config)
    q = quant_spec(cfg)
    if cfg["family"] == "mlp":
        return _mlp_generator(cfg, q)
    return _dcgan_generator(cfg, q)


def build_sensing(config: dict[str, Any], spectral_norm: bool = True) -> nn.Sequential:
    """A_φ for ``config`` (full precision). ``spectral_norm=False`` builds the plain network that
    holds already-normalised weights, as stored in a ``.qgen`` file."""
    cfg = complete_config(config)
    if cfg["family"] == "mlp":
        return _mlp_sensing(cfg)
    return _dcgan_sensing(cfg, spectral_norm)
