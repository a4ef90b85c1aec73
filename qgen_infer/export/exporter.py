"""Checkpoint -> quantized codes -> canonical packed layout -> ``.qgen``.

Every generator weight goes through the same :func:`qgen_infer.quant.quantize_codes` as training's
fake quantization, so at the trained bit width and granularity the weights decoded from the file
(``scale * (code - zero)``) equal the fake-quantized training weights bit for bit. Exporting at
another width or granularity is post-training quantization: allowed, warned about, and recorded in
the ``quantizer`` metadata (``post_training: true``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import qgen_infer
from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.errors import QgenError
from qgen_infer.export.fold import FusedLayer, ReshapeStep, fuse_generator
from qgen_infer.export.sensing import effective_sensing_state
from qgen_infer.format import PackedLayer, QgenFile, ReshapeLayer, pack_codes, write_qgen
from qgen_infer.format.packing import PACKED_BITS
from qgen_infer.format.schema import SENSING_DTYPES, channel_axis
from qgen_infer.models import ConfigError, complete_config
from qgen_infer.models.networks import quant_spec
from qgen_infer.quant import DEFAULT_GRID, GRANULARITIES, QuantSpec, quantize_codes

QUANTIZER_SCHEME = "linear_quantize"  # Hubara et al. for k >= 2, sign * mean|w| for k = 1


class ExportWarning(UserWarning):
    """Something about an export the user should know; the file is still written."""


class PostTrainingQuantizationWarning(ExportWarning):
    """The export's bit width or granularity differs from training's (accuracy may drop)."""


class SensingStorageWarning(ExportWarning):
    """The sensing net could not be stored as asked (``auto`` fell back to float32)."""


@dataclass
class ExportResult:
    path: Path
    bits: int
    granularity: str
    post_training: bool
    file_bytes: int
    weight_count: int
    packed_bytes: int
    warnings: list[str] = field(default_factory=list)
    sensing_dtype: str = "fp32"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _packed_layer(fused: FusedLayer, spec: QuantSpec, bits: int) -> PackedLayer:
    weight = fused.module.weight
    if not bool(torch.isfinite(weight).all()):
        raise QgenError(f"generator layer {fused.name!r} has non-finite weights; the checkpoint "
                        "cannot be exported")
    q = quantize_codes(weight, replace(spec, channel_axis=channel_axis(fused.kind)))
    m = fused.module
    conv = {}
    if fused.kind != "linear":
        conv = {"stride": _pair(m.stride), "padding": _pair(m.padding),
                "dilation": _pair(m.dilation)}
    if fused.kind == "conv_transpose2d":
        conv["output_padding"] = _pair(m.output_padding)
    for what, value in (("alpha", fused.alpha), ("beta", fused.beta)):
        if not bool(torch.isfinite(value).all()):
            raise QgenError(f"generator layer {fused.name!r}: folded {what} is not finite "
                            "(BatchNorm statistics or bias hold NaN/inf)")
    return PackedLayer(
        name=fused.name, kind=fused.kind, weight_shape=tuple(weight.shape),
        codes=pack_codes(q.codes, bits), scale=q.scale.float(), zero=q.zero.float(),
        alpha=fused.alpha, beta=fused.beta, activation=fused.activation,
        negative_slope=fused.negative_slope, batchnorm=fused.batchnorm, **conv,
    )


def _jsonable(value: Any) -> Any:
    """Keep the JSON-representable part of checkpoint metadata (drop tensors and the like)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _jsonable(value.item())
    return None


def solver_defaults(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The reconstruction defaults: the checkpoint's solver settings, with the *learned* step size
    ``β = exp(log_step_size)``."""
    solver = ckpt["solver"] if isinstance(ckpt["solver"], dict) else {}
    log_step = ckpt["log_step_size"]
    step = float(torch.as_tensor(log_step, dtype=torch.float64).exp())
    if not math.isfinite(step):
        raise QgenError(f"the checkpoint's learned step size exp({float(log_step)}) is not finite")
    return {
        "method": solver.get("method", "sdlss"),
        "sparsity": _jsonable(solver.get("sparsity")),
        "steps": _jsonable(solver.get("steps")),
        "project": bool(solver.get("project", False)),
        "step_size": step,
    }


def export_bits(trained_bits: int, bits: int | None) -> int:
    """The width to export: ``bits``, else the trained one (a full-precision checkpoint has
    none to give, so ``bits`` is then required)."""
    if bits is None:
        if trained_bits not in PACKED_BITS:
            raise QgenError("the checkpoint was trained at full precision (32 bits); choose the "
                            "export width with --bits 1..4")
        bits = trained_bits
    if bits not in PACKED_BITS:
        raise QgenError(f"--bits must be one of {PACKED_BITS}, got {bits}")
    return bits


def checkpoint_export_bits(ckpt: dict[str, Any], bits: int | None = None) -> int:
    """:func:`export_bits` for a loaded checkpoint (its config's trained width)."""
    try:
        trained_bits = int(ckpt["config"]["bits"])
    except (KeyError, TypeError, ValueError):
        raise QgenError("the checkpoint's network config has no valid 'bits'") from None
    return export_bits(trained_bits, bits)


SENSING_DTYPE_CHOICES = ("auto", *SENSING_DTYPES)
FP16_MAX = 65504.0


def trained_precision(ckpt: dict[str, Any]) -> str:
    """The ``qgen-train --precision`` a checkpoint was trained with (``"fp32"`` when unrecorded)."""
    train = ckpt.get("train")
    settings = train.get("settings") if isinstance(train, dict) else None
    precision = settings.get("precision") if isinstance(settings, dict) else None
    return precision if isinstance(precision, str) else "fp32"


def sensing_storage(ckpt: dict[str, Any], state: dict[str, torch.Tensor],
                    requested: str = "auto") -> tuple[dict[str, torch.Tensor], list[str]]:
    """The sensing tensors as the file stores them, and any note about the choice.

    ``"auto"``: float16 for a checkpoint trained with ``--precision bf16`` (A ran in bf16 in
    every training step, so float16's finer mantissa keeps all training relied on, at half the
    bytes of float32), else float32. ``"fp16"`` on weights beyond float16's range is an error
    (``"auto"`` keeps float32 for them, with a note). The engine loads either into its fp32
    network (which ``--precision`` may then run in bf16, as before)."""
    if requested not in SENSING_DTYPE_CHOICES:
        raise QgenError(f"sensing dtype must be one of {', '.join(SENSING_DTYPE_CHOICES)}, got "
                        f"{requested!r}")
    want = requested if requested != "auto" else (
        "fp16" if trained_precision(ckpt) == "bf16" else "fp32")
    if want == "fp32":
        return state, []
    biggest = max((float(t.abs().max()) for t in state.values() if t.numel()), default=0.0)
    if biggest > FP16_MAX:
        message = (f"the sensing weights reach {biggest:.3g}, beyond float16's range "
                   f"({FP16_MAX:g})")
        if requested == "fp16":
            raise QgenError(f"{message}; export them as fp32")
        return state, [f"{message}: stored as fp32"]
    return {k: v.to(torch.float16) for k, v in state.items()}, []


def build_qgen_file(ckpt: dict[str, Any], bits: int | None = None,
                    granularity: str | None = None, sensing_dtype: str = "auto"
                    ) -> tuple[QgenFile, list[str]]:
    """Quantize and pack a loaded checkpoint; returns the file content and any warnings
    (``sensing_dtype``: see :func:`sensing_storage`)."""
    qf, notes = _build(ckpt, bits, granularity, sensing_dtype)
    return qf, [text for _, text in notes]


def _build(ckpt: dict[str, Any], bits: int | None, granularity: str | None, sensing_dtype: str
           ) -> tuple[QgenFile, list[tuple[type[ExportWarning], str]]]:
    """:func:`build_qgen_file` with each warning's category."""
    try:
        config = complete_config(ckpt["config"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise QgenError(f"the checkpoint's network config is invalid ({exc})") from None
    trained_bits, trained_granularity = int(config["bits"]), str(config["granularity"])
    bits = export_bits(trained_bits, bits)
    granularity = granularity or trained_granularity
    if granularity not in GRANULARITIES:
        raise QgenError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    notes: list[tuple[type[ExportWarning], str]] = []
    post_training = (bits, granularity) != (trained_bits, trained_granularity)
    if post_training:
        notes.append((PostTrainingQuantizationWarning,
                      f"post-training quantization: trained at {trained_bits} bits "
                      f"({trained_granularity}), exporting at {bits} bits ({granularity}); the "
                      "exported weights are not the ones training saw"))
    generator, sensing = build_from_checkpoint(ckpt)
    spec = quant_spec(config, bits, granularity)
    layers: list[PackedLayer | ReshapeLayer] = []
    for step in fuse_generator(generator):
        if isinstance(step, ReshapeStep):
            layers.append(ReshapeLayer(step.name, tuple(step.shape)))
        else:
            layers.append(_packed_layer(step, spec, bits))
    quantizer = {
        "scheme": QUANTIZER_SCHEME,
        "granularity": granularity,
        "overflow_rate": spec.overflow_rate,
        # absent: the paper's mid-tread (and a 1-bit export has no grid: sign * mean|w|)
        **({"grid": spec.grid} if spec.grid != DEFAULT_GRID and bits >= 2 else {}),
        "trained_bits": trained_bits,
        "trained_granularity": trained_granularity,
        "post_training": post_training,
    }
    training = _jsonable(ckpt.get("train", {})) or {}
    if not isinstance(training, dict):
        training = {}
    exported_config = {**config, "bits": bits, "granularity": granularity}
    if exported_config["grid"] == DEFAULT_GRID:
        # files of the paper's grid name none, so they keep the bytes they had before the option
        del exported_config["grid"]
    stored, storage_notes = sensing_storage(ckpt, effective_sensing_state(config, sensing),
                                            sensing_dtype)
    notes += [(SensingStorageWarning, note) for note in storage_notes]
    qf = QgenFile(
        bits=bits, layers=layers, sensing=stored,
        config=exported_config, quantizer=quantizer, solver=solver_defaults(ckpt),
        training=training, writer=f"qgen-infer {qgen_infer.__version__}",
    )
    return qf, notes


def default_output_path(checkpoint: Path, bits: int) -> Path:
    """``model.pt`` at ``bits`` -> ``model-w{bits}.qgen`` beside it: a second width exported from
    the same checkpoint gets its own file."""
    return checkpoint.with_name(f"{checkpoint.stem}-w{bits}.qgen")


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None,
                      bits: int | None = None, granularity: str | None = None,
                      sensing_dtype: str = "auto") -> ExportResult:
    """Export ``checkpoint`` (a ``model.pt``) to a packed ``.qgen`` file (default
    :func:`default_output_path`).

    ``bits`` defaults to the trained width (required when the checkpoint is full precision),
    ``granularity`` to the trained one, ``sensing_dtype`` to float16 for a bf16-trained
    checkpoint, else float32 (:func:`sensing_storage`). A post-training re-quantization issues
    a :class:`PostTrainingQuantizationWarning` and is listed in ``ExportResult.warnings``.
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)  # weights_only=True: no pickle code runs
    bits = checkpoint_export_bits(ckpt, bits)
    path = Path(out) if out is not None else default_output_path(checkpoint, bits)
    return write_export(ckpt, path, bits, granularity, sensing_dtype)


def write_export(ckpt: dict[str, Any], path: Path, bits: int | None = None,
                 granularity: str | None = None, sensing_dtype: str = "auto") -> ExportResult:
    """Quantize, pack and write a loaded checkpoint to ``path`` (see :func:`export_checkpoint`)."""
    qf, notes = _build(ckpt, bits, granularity, sensing_dtype)
    for category, note in notes:
        warnings.warn(note, category, stacklevel=3)
    if not path.parent.is_dir():
        raise QgenError(f"output folder {str(path.parent)!r} does not exist")
    size = write_qgen(path, qf)
    packed = qf.packed_layers
    return ExportResult(
        path=path, bits=qf.bits, granularity=qf.quantizer["granularity"],
        post_training=qf.quantizer["post_training"], file_bytes=size,
        weight_count=sum(layer.numel for layer in packed),
        packed_bytes=sum(layer.codes.numel() for layer in packed),
        warnings=[text for _, text in notes],
        sensing_dtype=qf.sensing_dtype,
    )
