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

from qgen_infer.allocator import keep_freed_memory
from qgen_infer.engine.backend import Backend
from qgen_infer.engine.memory import (
    FP32_BYTES,
    MemoryPlan,
    check_fits,
    row_bytes,
    sequential_elements,
)
from qgen_infer.engine.packed_modules import PACKED_MODULES
from qgen_infer.engine.registry import get_backend
from qgen_infer.errors import FormatError, QgenError
from qgen_infer.format import PackedLayer, QgenFile, read_qgen
from qgen_infer.format.plan import ChainPlan, chain_plan
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
    memory: MemoryPlan | None = None  # bytes for the weights and per latent row (engine.memory)

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
    if dev.type not in ("cpu", "cuda"):
        raise QgenError(f"unsupported device {str(dev)!r}: use cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QgenError(f"device {str(dev)!r} requested but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise QgenError(f"device {str(dev)!r} requested but this machine has "
                        f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_layer_chain(qf: QgenFile, latent_dim: int, image_shape: list[int]) -> ChainPlan:
    """Propagate a sample's shape through the layers (:func:`qgen_infer.format.plan.chain_plan`);
    any mismatch is a :class:`FormatError`. Returns the chain's per-sample sizes."""
    return chain_plan([layer.description() for layer in qf.layers], latent_dim, image_shape)


def check_sensing_shapes(config: dict[str, Any], state: dict[str, torch.Tensor],
                         image_shape: list[int]) -> int:
    """Build the config's plain sensing net on the ``meta`` device (no memory: a config asking
    for 10**9 measurements allocates nothing), hold its parameter shapes to the file's tensors,
    and return its activation elements per image."""
    with torch.device("meta"):
        net = build_sensing(config, spectral_norm=False)
    expected = {k: list(v.shape) for k, v in net.state_dict().items()}
    found = {k: list(v.shape) for k, v in state.items()}
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            raise FormatError(f"the sensing tensors do not fit the config's network: {key!r} is "
                              f"{found.get(key)} in the file, the config makes "
                              f"{expected.get(key)}")
    return sequential_elements(net, image_shape)


def _memory_plan(qf: QgenFile, config: dict[str, Any], backend: Backend,
                 sensing_elements: int) -> MemoryPlan:
    """Weights as the backend holds them (the reference backend dequantizes to fp32; packed
    backends keep the codes and may repack them once) and per-row activations."""
    weights = sum(FP32_BYTES * (t.numel()) for t in qf.sensing.values())
    for layer in qf.packed_layers:
        codes = FP32_BYTES * layer.numel if backend.name == "reference" else \
            2 * layer.codes.numel()
        terms = sum(t.numel() for t in (layer.scale, layer.zero, layer.alpha, layer.beta))
        weights += codes + FP32_BYTES * terms
    plan = qf.plan or check_layer_chain(qf, config["latent_dim"], config["image_shape"])
    per_row = row_bytes(config["latent_dim"], plan.activations + sensing_elements,
                        plan.workspace)
    return MemoryPlan(weight_bytes=weights, row_bytes=per_row)


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

    On the CPU this also tells glibc to keep freed blocks of up to 32 MiB in the process
    (:func:`qgen_infer.allocator.keep_freed_memory`, as training does): a solver step allocates
    and frees its activations again every iteration, and without it each is page-faulted in
    afresh (DCGAN reconstructions 1.01-1.16x, MNIST 1.02-1.05x: bench/results/reconstruct.md).
    """
    dev = _device(device)
    if dev.type == "cpu":
        keep_freed_memory()
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
        sensing_elements = check_sensing_shapes(config, qf.sensing, config["image_shape"])
    except FormatError as exc:
        raise FormatError(f"{str(path)!r}: {exc}") from None
    memory = _memory_plan(qf, config, engine, sensing_elements)
    check_fits(memory.need(1), dev, f"{str(path)!r} (weights and one image)",
               "this model cannot run on this machine")
    sensing = build_plain_sensing(config, qf.sensing, dev)
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
        layers=[layer.name for layer in qf.layers], memory=memory,
    )

