"""``qgen_infer.load``: a ``.qgen`` file -> packed generator G, sensing network A, solver defaults.

The engine depends on the file format and the network definitions (for the plain sensing net), never
on training code. Everything structural is checked before a kernel runs: the reader validates bytes
and metadata; here the layers must chain from ``latent_dim`` to ``image_shape`` and the sensing
tensors must fit ``build_sensing(config, spectral_norm=False)`` exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qgen_infer.engine.backend import Backend
from qgen_infer.engine.packed_modules import PACKED_MODULES
from qgen_infer.engine.registry import get_backend
from qgen_infer.errors import FormatError, QgenError
from qgen_infer.format import PackedLayer, QgenFile, ReshapeLayer, read_qgen
from qgen_infer.format.packing import shape_numel
from qgen_infer.models import ConfigError, Reshape, build_sensing, complete_config


@dataclass(repr=False)  # the generated repr would print every packed layer and tensor
class QgenModel:
    """A loaded ``.qgen`` model.

    ``generator``: ``nn.Sequential`` of packed layers, ``z [B, latent_dim] -> x [B, C, H, W]``;
    ``sensing``: the plain fp32 A_φ, ``x -> y [B, measurements]``; ``solver``: reconstruction
    defaults (method, sparsity, steps, project, step_size); ``metadata``: quantizer, training,
    format version, layout, writer and the raw metadata strings.
    """

    generator: nn.Sequential
    sensing: nn.Module
    config: dict[str, Any]
    solver: dict[str, Any]
    metadata: dict[str, Any]
    bits: int
    backend: Backend
    device: torch.device
    path: Path | None = None
    layers: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        c = self.config
        where = f"{str(self.path)!r}, " if self.path is not None else ""
        return (f"QgenModel({where}bits={self.bits}, backend={self.backend.name!r}, "
                f"device={str(self.device)!r}, network={c.get('family')!r}, "
                f"latent_dim={c.get('latent_dim')}, image_shape={list(c['image_shape'])}, "
                f"measurements={c.get('measurements')}, sparsity={self.solver.get('sparsity')}, "
                f"steps={self.solver.get('steps')})")


def _device(device: torch.device | str | None) -> torch.device:
    try:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as exc:
        raise QgenError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QgenError(f"device {str(dev)!r} requested but CUDA is not available here")
    return dev


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _convt_out(size: int, k: int, s: int, p: int, d: int, op: int) -> int:
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def check_layer_chain(qf: QgenFile, latent_dim: int, image_shape: list[int]) -> None:
    """Propagate a sample's shape through the layers; any mismatch is a :class:`FormatError`."""
    shape: tuple[int, ...] = (latent_dim,)
    for layer in qf.layers:
        where = f"layer {layer.name!r}"
        if isinstance(layer, ReshapeLayer):
            if shape_numel(layer.shape) != shape_numel(shape):
                raise FormatError(f"{where} reshapes {list(shape)} to {list(layer.shape)}")
            shape = tuple(layer.shape)
            continue
        ws = layer.weight_shape
        if layer.kind == "linear":
            if shape != (ws[1],):
                raise FormatError(f"{where} expects {ws[1]} input features, gets {list(shape)}")
            shape = (ws[0],)
            continue
        c_in = ws[0] if layer.kind == "conv_transpose2d" else ws[1]
        if len(shape) != 3 or shape[0] != c_in:
            raise FormatError(f"{where} expects [{c_in}, H, W] inputs, gets {list(shape)}")
        args = [(ws[2 + a], layer.stride[a], layer.padding[a], layer.dilation[a]) for a in (0, 1)]
        if layer.kind == "conv2d":
            hw = [_conv_out(shape[1 + a], *args[a]) for a in (0, 1)]
        else:
            hw = [_convt_out(shape[1 + a], *args[a], layer.output_padding[a]) for a in (0, 1)]
        if min(hw) < 1:
            raise FormatError(f"{where} produces an empty {hw} output from {list(shape)}")
        shape = (layer.out_channels, *hw)
    if list(shape) != list(image_shape):
        raise FormatError(f"the generator makes {list(shape)} samples, but the config's "
                          f"image_shape is {list(image_shape)}")


def build_generator(qf: QgenFile, backend: Backend, device: torch.device) -> nn.Sequential:
    """The packed generator: one packed module per weight layer, ``Reshape`` for reshapes."""
    modules: dict[str, nn.Module] = {}
    for layer in qf.layers:
        if isinstance(layer, PackedLayer):
            modules[layer.name] = PACKED_MODULES[layer.kind](layer, qf.bits, backend, device)
        else:
            modules[layer.name] = Reshape(*layer.shape)
    return nn.Sequential(OrderedDict(modules)).eval()


def build_plain_sensing(config: dict[str, Any], state: dict[str, torch.Tensor],
                        device: torch.device) -> nn.Module:
    sensing = build_sensing(config, spectral_norm=False)
    try:
        sensing.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise FormatError(f"the sensing tensors do not fit the config's network ({detail})"
                          ) from None
    return sensing.to(device).eval().requires_grad_(False)


def load(path: str | Path, backend: str = "auto",
         device: torch.device | str | None = None) -> QgenModel:
    """Load a packed ``.qgen`` model file (written by ``qgen-export``) onto ``device``.

    ``backend``: ``"auto"`` (the default, as ``qgen-reconstruct --backend``: ``triton`` on a
    CUDA device, else the C++ ``cpu`` kernels when built, else ``reference``), ``"cpu"``,
    ``"triton"`` or ``"reference"`` (dequantize once, plain torch: the oracle the others are
    tested against). ``device``: a torch device (default CPU).

    Returns a :class:`QgenModel`. A malformed file raises :class:`FormatError`, an unknown or
    unavailable backend :class:`QgenError`.
    """
    dev = _device(device)
    engine = get_backend(backend, dev)
    qf = read_qgen(path)
    try:
        config = complete_config(qf.config)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{str(path)!r}: invalid network config ({exc})"[:400]) from None
    if int(config["bits"]) != qf.bits:
        raise FormatError(f"{str(path)!r}: config bits {config['bits']} disagree with the "
                          f"file's bits {qf.bits}")
    try:
        check_layer_chain(qf, config["latent_dim"], config["image_shape"])
        sensing = build_plain_sensing(config, qf.sensing, dev)
    except FormatError as exc:
        raise FormatError(f"{str(path)!r}: {exc}") from None
    generator = build_generator(qf, engine, dev)
    metadata = {
        "format_version": qf.format_version,
        "layout": qf.layout,
        "writer": qf.writer,
        "quantizer": qf.quantizer,
        "training": qf.training,
        "raw": dict(qf.metadata),
    }
    return QgenModel(
        generator=generator, sensing=sensing, config=config, solver=dict(qf.solver),
        metadata=metadata, bits=qf.bits, backend=engine, device=dev, path=Path(path),
        layers=[layer.name for layer in qf.layers],
    )

