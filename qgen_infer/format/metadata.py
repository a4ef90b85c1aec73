"""The model description's schema: every field of the JSON metadata, with its type, range and unit.

One description serves the ``.qgen`` reader and the checkpoint reader (``model.pt`` carries the same
``config`` and ``solver``), so a value is checked once, against one table, before anything uses
it: no ``int("abc")`` deep in a network builder, no ``hidden: 10**6`` reaching an allocation, no
``solver: {}`` silently falling back to defaults. Ranges are generous bounds on what a network of
this package can be, not tuning advice; ``docs/FORMAT.md`` lists the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qgen_infer.errors import FormatError
from qgen_infer.limits import MAX_LATENT, MAX_MEASUREMENTS, MAX_STEP_SIZE, MAX_STEPS

MAX_SIDE = 1 << 14  # image height/width in pixels
MAX_CHANNELS = 1 << 12


@dataclass(frozen=True)
class Field:
    """One metadata field: ``kind`` is int, number, bool, str, choice, ints (a list of ints),
    object or json (any finite JSON value); ``low``/``high`` bound numbers and list entries."""

    kind: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    length: int | None = None  # exact list length for kind "ints"
    required: bool = True
    nullable: bool = False
    low_open: bool = False  # low is excluded (a step size must be > 0)
    high_open: bool = False  # high is excluded (an overflow rate must be < 1)


CONFIG: dict[str, Field] = {
    "family": Field("choice", choices=("mlp", "dcgan")),
    "image_shape": Field("ints", "[channels, pixels, pixels]", 1, MAX_SIDE, length=3),
    "latent_dim": Field("int", "latent entries", 1, MAX_LATENT),
    "measurements": Field("int", "values per image", 1, MAX_MEASUREMENTS),
    "hidden": Field("int", "features", 1, 1 << 16, required=False),
    "negative_slope": Field("number", "LeakyReLU slope", 0, 1, required=False),
    "width": Field("int", "channels", 1, MAX_CHANNELS, required=False),
    "sensing_slope": Field("number", "LeakyReLU slope", 0, 1, required=False),
    "bits": Field("choice", "bits per weight", choices=(1, 2, 3, 4, 32)),
    "granularity": Field("choice", choices=("tensor", "channel")),
    "overflow_rate": Field("number", "fraction of weights", 0, 1, required=False,
                           high_open=True),
    "grid": Field("choice", choices=("mid-tread", "mid-rise"), required=False),
}

SOLVER: dict[str, Field] = {
    "method": Field("choice", choices=("sdlss", "dcs")),
    "sparsity": Field("int", "latent non-zeros", 1, MAX_LATENT, nullable=True),
    "steps": Field("int", "proximal steps", 1, MAX_STEPS),
    "project": Field("bool"),
    "step_size": Field("number", "latent step beta", 0, MAX_STEP_SIZE, low_open=True),
    "latent_dim": Field("int", "latent entries", 1, MAX_LATENT, required=False),  # checkpoints
}

QUANTIZER: dict[str, Field] = {
    "granularity": Field("choice", choices=("tensor", "channel")),
    "scheme": Field("choice", choices=("linear_quantize",), required=False),
    "overflow_rate": Field("number", "fraction of weights", 0, 1, required=False,
                           high_open=True),
    "grid": Field("choice", choices=("mid-tread", "mid-rise"), required=False),
    "trained_bits": Field("choice", "bits per weight", choices=(1, 2, 3, 4, 32), required=False),
    "trained_granularity": Field("choice", choices=("tensor", "channel"), required=False),
    "post_training": Field("bool", required=False),
}

# Provenance: typed where known; ``settings`` (the qgen-train flags) and unknown keys need only be
# finite JSON, which the metadata parser already guarantees.
TRAINING: dict[str, Field] = {
    "epochs": Field("int", "epochs", 0, 1 << 31, required=False),
    "step": Field("int", "optimizer steps", 0, 1 << 53, required=False),
    "seed": Field("int", "", -(1 << 63), 1 << 64, required=False),
    "wall_time_s": Field("number", "seconds", 0, 1e9, required=False),
    "final": Field("bool", required=False),
    "data": Field("str", required=False),
    "settings": Field("object", required=False),
}


def _describe(spec: Field) -> str:
    if spec.kind == "choice":
        return f"one of {list(spec.choices)}"
    low = "(" if spec.low_open else "["
    what = {"int": "an integer", "number": "a number", "ints": f"a list of {spec.length} "
            "integers each"}.get(spec.kind, f"a {spec.kind}")
    high = ")" if spec.high_open else "]"
    span = f" in {low}{spec.low:g}, {spec.high:g}{high}" if spec.low is not None else ""
    return what + span + (f" ({spec.unit})" if spec.unit else "")


def _in_range(value: float, spec: Field) -> bool:
    if spec.low is None:
        return True
    above = value > spec.low if spec.low_open else value >= spec.low
    below = value < spec.high if spec.high_open else value <= spec.high  # type: ignore[operator]
    return above and below


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(value: Any, spec: Field, what: str) -> Any:
    """``value`` if it fits ``spec``, else one :class:`FormatError` line naming ``what``."""
    if value is None and spec.nullable:
        return None
    kind, ok = spec.kind, False
    if kind == "int":
        ok = _is_int(value) and _in_range(value, spec)
    elif kind == "number":
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value) \
            and _in_range(value, spec)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "choice":
        ok = any(value == c and type(value) is type(c) for c in spec.choices)
    elif kind == "ints":
        ok = isinstance(value, list) and len(value) == spec.length and all(
            _is_int(v) and _in_range(v, spec) for v in value)
    elif kind == "object":
        ok = isinstance(value, dict)
    if not ok:
        raise FormatError(f"{what} must be {_describe(spec)}, got {value!r}"[:300])
    return value


def check_object(value: Any, fields: dict[str, Field], what: str,
                 allow_unknown: bool = False) -> dict[str, Any]:
    """A JSON object checked field by field: required fields present, unknown keys refused
    (unless ``allow_unknown``), every known value of its type and in its range."""
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    missing = [k for k, spec in fields.items() if spec.required and k not in value]
    if missing:
        raise FormatError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown and not allow_unknown:
        raise FormatError(f"{what} has unknown keys {unknown}"[:300])
    for key, spec in fields.items():
        if key in value:
            check_value(value[key], spec, f"{what} {key}")
    return value


def check_model_description(config: Any, solver: Any, what: str = "metadata") -> None:
    """The network config and solver defaults, each field and the fields that relate them."""
    check_object(config, CONFIG, f"{what} config")
    check_object(solver, SOLVER, f"{what} solver")
    latent = config["latent_dim"]
    if solver["sparsity"] is not None and solver["sparsity"] > latent:
        raise FormatError(f"{what} solver sparsity {solver['sparsity']} exceeds the config's "
                          f"latent_dim {latent}")
    if solver.get("latent_dim", latent) != latent:
        raise FormatError(f"{what} solver latent_dim {solver['latent_dim']} disagrees with the "
                          f"config's latent_dim {latent}")
