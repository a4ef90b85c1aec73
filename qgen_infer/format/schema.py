"""What a ``.qgen`` file holds, as plain data: constants, tensor names, and the layer records.

Tensor names (every tensor float32 unless said otherwise)::

    generator.<layer>.codes   uint8 [packed_nbytes(weight_shape, bits)]  canonical packed codes
    generator.<layer>.scale   [1] (tensor granularity) or [C_out] (channel)
    generator.<layer>.zero    same shape as scale;  weight = scale * (code - zero)
    generator.<layer>.alpha   [C_out]  folded BatchNorm gain (ones when there is no BatchNorm)
    generator.<layer>.beta    [C_out]  folded BatchNorm shift plus bias (zeros when neither)
    sensing.<state_dict key>  the sensing network's plain (already normalised) weights: float32,
                              or float16 in a version-3 file

``C_out`` is the layer's number of output features/channels: ``weight_shape[0]`` for linear and
conv2d, ``weight_shape[1]`` for conv_transpose2d (PyTorch's ``[C_in, C_out, kh, kw]``). The
metadata keys are listed in :data:`METADATA_KEYS` and documented in ``docs/FORMAT.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qgen_infer.activations import ACTIVATIONS as ACTIVATIONS  # a layer's activation names
from qgen_infer.format.plan import ChainPlan

if TYPE_CHECKING:  # the tensors are torch tensors or, read for qgen-info, numpy arrays
    import torch

FORMAT_NAME = "qgen"
FORMAT_VERSION = 2  # 2: the checksum covers the metadata too (qgen_infer.format.digest)
# 3: as 2, with the sensing tensors stored as float16 (qgen-export --sensing-dtype); a file with
# fp32 sensing tensors stays version 2, so that readers from before version 3 still read it
SENSING_F16_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
SENSING_DTYPES = ("fp32", "fp16")  # how the sensing tensors may be stored
LAYOUT_NAME = "lsb-bitstream-u32"  # see qgen_infer.format.packing and docs/FORMAT.md
CHECKSUM_PREFIX = "sha256:"

WEIGHT_KINDS = ("linear", "conv2d", "conv_transpose2d")
RESHAPE_KIND = "reshape"
GRANULARITIES = ("tensor", "channel")

LAYER_TENSOR_FIELDS = ("codes", "scale", "zero", "alpha", "beta")
GENERATOR_PREFIX = "generator."
SENSING_PREFIX = "sensing."

# Every key of __metadata__, all required; values are strings (JSON where marked).
METADATA_KEYS = (
    "format",          # "qgen"
    "format_version",  # "2", or "3" with float16 sensing tensors ("1" files are read too)
    "bits",            # "1".."4"
    "layout",          # LAYOUT_NAME
    "quantizer",       # JSON object
    "config",          # JSON object: the network config
    "layers",          # JSON list: one description per generator layer, in forward order
    "sensing",         # JSON object: sensing tensor name -> shape
    "solver",          # JSON object: the reconstruction defaults
    "training",        # JSON object: training metadata from the checkpoint
    "writer",          # free text, e.g. "qgen-infer 0.1.0"
    "checksum",        # "sha256:<64 hex digits>" over the other metadata and the data region
)

LAYER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def output_channels(kind: str, weight_shape: tuple[int, ...]) -> int:
    """``C_out`` of a weight layer (the length of alpha, beta and of per-channel scales)."""
    return int(weight_shape[1] if kind == "conv_transpose2d" else weight_shape[0])


def channel_axis(kind: str) -> int:
    """The output-channel axis of the weight in PyTorch layout (as ``QuantSpec.channel_axis``)."""
    return 1 if kind == "conv_transpose2d" else 0


@dataclass
class PackedLayer:
    """A quantized weight layer with its folded epilogue ``act(alpha * (W x) + beta)``.

    ``codes`` is the canonical packed stream of the ``weight_shape`` codes; ``scale``/``zero`` are
    ``[1]`` or ``[C_out]``; ``alpha``/``beta`` are ``[C_out]``. Conv fields are pairs (h, w) and
    are ignored for ``kind == "linear"``.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    activation: str = "none"
    negative_slope: float = 0.01
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    batchnorm: str | None = None  # name of the BatchNorm folded into alpha/beta (provenance)

    @property
    def out_channels(self) -> int:
        return output_channels(self.kind, self.weight_shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    def description(self) -> dict[str, Any]:
        """The layer's JSON description for the ``layers`` metadata list."""
        desc: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "activation": self.activation,
            "negative_slope": float(self.negative_slope),
            "batchnorm": self.batchnorm,
        }
        if self.kind != "linear":
            desc.update(stride=list(self.stride), padding=list(self.padding),
                        dilation=list(self.dilation))
        if self.kind == "conv_transpose2d":
            desc["output_padding"] = list(self.output_padding)
        return desc

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{GENERATOR_PREFIX}{self.name}.{f}": getattr(self, f) for f in LAYER_TENSOR_FIELDS}


@dataclass
class ReshapeLayer:
    """View each sample's flat features as ``shape`` (no tensors)."""

    name: str
    shape: tuple[int, ...]

    def description(self) -> dict[str, Any]:
        return {"name": self.name, "kind": RESHAPE_KIND, "shape": list(self.shape)}


GeneratorLayer = PackedLayer | ReshapeLayer


@dataclass
class QgenFile:
    """The decoded content of a ``.qgen`` file (everything validated by the reader)."""

    bits: int
    layers: list[GeneratorLayer]
    sensing: dict[str, torch.Tensor]
    config: dict[str, Any]
    quantizer: dict[str, Any]
    solver: dict[str, Any]
    training: dict[str, Any]
    format_version: int = FORMAT_VERSION
    layout: str = LAYOUT_NAME
    writer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # the raw __metadata__ strings
    plan: ChainPlan | None = None  # the layer chain's per-sample sizes (set by the reader)

    @property
    def packed_layers(self) -> list[PackedLayer]:
        return [layer for layer in self.layers if isinstance(layer, PackedLayer)]

    @property
    def sensing_dtype(self) -> str:
        """How the sensing tensors are (to be) stored: ``"fp16"`` when every one is float16,
        else ``"fp32"`` (the writer converts anything else to float32); torch or numpy."""
        f16 = [str(t.dtype) in ("torch.float16", "float16") for t in self.sensing.values()]
        return "fp16" if f16 and all(f16) else "fp32"

    @property
    def version_to_write(self) -> int:
        """The lowest format version that holds this content (older readers keep working)."""
        return SENSING_F16_VERSION if self.sensing_dtype == "fp16" else FORMAT_VERSION
