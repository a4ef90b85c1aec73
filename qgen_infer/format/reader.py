"""Read a ``.qgen`` file with strict validation: every problem is one :class:`FormatError` line.

safetensors checks byte ranges (offsets inside the file, contiguous, sized by dtype and shape); it
does not know what the tensors mean. Before any of them is used, this reader checks, in order:

1. the 8-byte header length, read here first: within :data:`MAX_HEADER_BYTES` and the file;
2. one linear pass over the raw header (Python's C JSON scanner, keeping nothing but key sets):
   no object names a key twice (serde_json, under safetensors, would silently keep the last) and
   at most :data:`MAX_TENSORS` tensors;
3. the container, parsed by safetensors itself (offsets, sizes, dtypes);
4. ``__metadata__``: exactly the known keys, format name and version, bits in 1..4, layout name;
5. the JSON values qgen wrote (bounded size and depth, finite numbers, see :mod:`bounded_json`),
   each field against the model description's schema (:mod:`qgen_infer.format.metadata`), the
   layers one by one;
6. the tensor names: none missing, none unknown; every tensor's dtype and shape against its
   description (the sensing tensors float16 in a version-3 file, float32 before), the packed
   codes' length against ``packed_nbytes(weight_shape, bits)``;
7. the layer chain, statically (:mod:`qgen_infer.format.plan`): one sample's shape from
   ``latent_dim`` to ``image_shape``, every activation bounded; the memory a forward pass needs
   is not bounded by the file (a 1x1 transposed convolution of stride 4096 is tiny on disk);
8. the sha256 checksum: version 2 over the metadata and the data region, version 1 over the data
   region only (a corrupted or edited file stops here);
9. tensor values: finite, scales positive, every value and every decoded weight within
   :data:`MAX_ABS_VALUE`, packing padding zero.

The checks run on numpy views of the tensors, so ``read_qgen(path, tensors="numpy")`` (what
``qgen-info`` uses) never imports torch; the default returns torch tensors for the engine.

Sizes are bounded by the file: a declared shape must match bytes actually present, so no check
allocates more than a small multiple of the file size.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from qgen_infer.errors import FormatError
from qgen_infer.format import bounded_json, metadata
from qgen_infer.format.digest import file_checksum
from qgen_infer.format.layout import PACKED_BITS, packed_nbytes, padding_is_zero, shape_numel
from qgen_infer.format.plan import chain_plan
from qgen_infer.format.schema import (
    ACTIVATIONS,
    CHECKSUM_PREFIX,
    FORMAT_NAME,
    GENERATOR_PREFIX,
    LAYER_NAME,
    LAYER_TENSOR_FIELDS,
    LAYOUT_NAME,
    METADATA_KEYS,
    READABLE_VERSIONS,
    RESHAPE_KIND,
    SENSING_F16_VERSION,
    SENSING_PREFIX,
    WEIGHT_KINDS,
    GeneratorLayer,
    PackedLayer,
    QgenFile,
    ReshapeLayer,
    output_channels,
)

MAX_HEADER_BYTES = 8 << 20  # a real header is a few KiB; this bounds safetensors' JSON parse
MAX_DIM = 2**31 - 1
MAX_NUMEL = 2**34
MAX_CONV_PARAM = 1 << 16
MAX_LAYERS = 1024
MAX_TENSORS = 8192  # 5 per layer and the sensing net's; a real file has 20-60
MAX_WRITER_CHARS = 200
# Every float in the file and every decoded weight scale * (code - zero) stays within this: real
# weights are ~0.1 and a folded BatchNorm gain ~300, while 3e38 is finite yet overflows a forward.
MAX_ABS_VALUE = float(2**20)
_HEADER_LENGTH = struct.Struct("<Q")


def _fail(path: Path, message: str) -> FormatError:
    return FormatError(f"{str(path)!r}: {message}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_header_length(path: Path) -> int:
    """Read and bound the safetensors header length; return the data region's start offset."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_LENGTH.size + 1)
    if len(head) < _HEADER_LENGTH.size:
        raise _fail(path, f"truncated: {size} bytes, shorter than the 8-byte header length")
    (header_len,) = _HEADER_LENGTH.unpack_from(head)
    if header_len > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit "
                          "(not a .qgen file, or corrupt)")
    if _HEADER_LENGTH.size + header_len > size:
        raise _fail(path, f"truncated: header length {header_len} runs past the end of the "
                          f"{size}-byte file")
    if head[_HEADER_LENGTH.size:] != b"{":
        raise _fail(path, "not a safetensors file (its header is not a JSON object)")
    return _HEADER_LENGTH.size + header_len


def _unique_keys(pairs: list[tuple[str, Any]]) -> int:
    """``object_pairs_hook``: refuse a repeated key; keep only the object's size (so the scan
    holds no more than one object's pairs at a time)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise FormatError(f"duplicate name {key!r} in the header"[:300])
        seen.add(key)
    return len(pairs)


def _check_header_keys(path: Path, data_start: int) -> None:
    """One linear pass over the raw header: no duplicate key in any object (escapes decoded, so
    ``"\\u0062its"`` is ``"bits"``), at most :data:`MAX_TENSORS` tensors. safetensors parses the
    header again; this pass only refuses, it never interprets."""
    with open(path, "rb") as fh:
        fh.seek(_HEADER_LENGTH.size)
        header = fh.read(data_start - _HEADER_LENGTH.size)
    try:
        entries = json.loads(header, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _fail(path, f"not a valid safetensors file (its header is not JSON: "
                          f"{_first_line(exc)})"[:300]) from None
    if not isinstance(entries, int):
        raise _fail(path, "not a safetensors file (its header is not a JSON object)")
    if entries - 1 > MAX_TENSORS:  # one entry is __metadata__
        raise _fail(path, f"the header lists {entries - 1} tensors (limit {MAX_TENSORS})")


# ---- metadata values --------------------------------------------------------------------------


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _int_list(value: Any, what: str, length: int | tuple[int, int], low: int, high: int
              ) -> tuple[int, ...]:
    lo_len, hi_len = (length, length) if isinstance(length, int) else length
    if not isinstance(value, list) or not lo_len <= len(value) <= hi_len:
        raise FormatError(f"{what} must be a list of {length} integers, got {value!r}"[:200])
    return tuple(_int(v, what, low, high) for v in value)


def _shape(value: Any, what: str, ndim: int | tuple[int, int]) -> tuple[int, ...]:
    shape = _int_list(value, what, ndim, 1, MAX_DIM)
    if shape_numel(shape) > MAX_NUMEL:
        raise FormatError(f"{what} {list(shape)} has more than {MAX_NUMEL} elements")
    return shape


_COMMON_KEYS = {"name", "kind", "weight_shape", "activation", "negative_slope", "batchnorm"}
_LAYER_KEYS = {
    "linear": _COMMON_KEYS,
    "conv2d": _COMMON_KEYS | {"stride", "padding", "dilation"},
    "conv_transpose2d": _COMMON_KEYS | {"stride", "padding", "dilation", "output_padding"},
    RESHAPE_KIND: {"name", "kind", "shape"},
}


def _parse_layer(desc: Any, index: int) -> dict[str, Any]:
    """Validate one layer description; returns the PackedLayer/ReshapeLayer fields (no tensors)."""
    if not isinstance(desc, dict):
        raise FormatError(f"layer {index} description must be a JSON object")
    name = desc.get("name")
    if not isinstance(name, str) or not LAYER_NAME.match(name):
        raise FormatError(f"layer {index} has an invalid name {name!r}"[:200])
    kind = desc.get("kind")
    if kind not in _LAYER_KEYS:
        raise FormatError(f"layer {name!r} has unknown kind {kind!r}; expected one of "
                          f"{(*WEIGHT_KINDS, RESHAPE_KIND)}"[:300])
    keys = set(desc)
    if keys != _LAYER_KEYS[kind]:
        missing, unknown = sorted(_LAYER_KEYS[kind] - keys), sorted(keys - _LAYER_KEYS[kind])
        raise FormatError(f"layer {name!r} ({kind}): missing keys {missing}, unknown keys "
                          f"{unknown}"[:300])
    if kind == RESHAPE_KIND:
        return {"name": name, "kind": kind,
                "shape": _shape(desc["shape"], f"layer {name!r} shape", (1, 4))}
    where = f"layer {name!r}"
    fields: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "weight_shape": _shape(desc["weight_shape"], f"{where} weight_shape",
                               2 if kind == "linear" else 4),
    }
    if desc["activation"] not in ACTIVATIONS:
        raise FormatError(f"{where} has unknown activation {desc['activation']!r}; expected one "
                          f"of {ACTIVATIONS}"[:300])
    fields["activation"] = desc["activation"]
    fields["negative_slope"] = bounded_json.finite_number(desc["negative_slope"],
                                                          f"{where} negative_slope")
    if desc["batchnorm"] is not None and not isinstance(desc["batchnorm"], str):
        raise FormatError(f"{where} batchnorm must be a name or null")
    fields["batchnorm"] = desc["batchnorm"]
    if kind != "linear":
        fields["stride"] = _int_list(desc["stride"], f"{where} stride", 2, 1, MAX_CONV_PARAM)
        fields["padding"] = _int_list(desc["padding"], f"{where} padding", 2, 0, MAX_CONV_PARAM)
        fields["dilation"] = _int_list(desc["dilation"], f"{where} dilation", 2, 1,
                                       MAX_CONV_PARAM)
    if kind == "conv_transpose2d":
        fields["output_padding"] = _int_list(desc["output_padding"], f"{where} output_padding",
                                             2, 0, MAX_CONV_PARAM)
        for op, s, d in zip(fields["output_padding"], fields["stride"], fields["dilation"],
                            strict=True):
            if op >= max(s, d):
                raise FormatError(f"{where} output_padding must be smaller than stride or "
                                  f"dilation, got {list(fields['output_padding'])}")
    return fields


def _parse_layers(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise FormatError("metadata 'layers' must be a non-empty JSON list")
    if len(value) > MAX_LAYERS:
        raise FormatError(f"metadata 'layers' lists {len(value)} layers (limit {MAX_LAYERS})")
    layers = [_parse_layer(desc, i) for i, desc in enumerate(value)]
    seen: set[str] = set()
    for layer in layers:
        if layer["name"] in seen:
            raise FormatError(f"duplicate layer name {layer['name']!r}")
        seen.add(layer["name"])
    return layers


def _parse_sensing(value: Any) -> dict[str, tuple[int, ...]]:
    shapes = metadata.check_object(value, {}, "metadata sensing", allow_unknown=True)
    if not shapes:
        raise FormatError("metadata 'sensing' lists no tensors")
    return {str(k): _shape(v, f"sensing tensor {k!r} shape", (0, 4))
            for k, v in shapes.items()}


def _parse_metadata(meta: dict[str, str] | None) -> dict[str, Any]:
    """Check the metadata keys and the simple fields, before the checksum and the JSON values."""
    if not meta:
        raise FormatError("no qgen metadata (a safetensors file, but not a .qgen file)")
    missing = [k for k in METADATA_KEYS if k not in meta]
    unknown = sorted(k for k in meta if k not in METADATA_KEYS)
    if meta.get("format") != FORMAT_NAME:
        raise FormatError(f"format is {meta.get('format')!r}, not {FORMAT_NAME!r} "
                          "(not a .qgen file)"[:300])
    if meta.get("format_version") not in {str(v) for v in READABLE_VERSIONS}:
        raise FormatError(f"unsupported format version {meta.get('format_version')!r}; this "
                          f"qgen-infer reads versions {', '.join(map(str, READABLE_VERSIONS))}"
                          [:300])
    if missing:
        raise FormatError(f"metadata lacks {', '.join(missing)}")
    if unknown:
        raise FormatError(f"unknown metadata keys {unknown}"[:300])
    if meta["bits"] not in {str(b) for b in PACKED_BITS}:
        raise FormatError(f"bits must be one of {PACKED_BITS}, got {meta['bits']!r}"[:300])
    if meta["layout"] != LAYOUT_NAME:
        raise FormatError(f"unknown packed layout {meta['layout']!r}; this qgen-infer reads "
                          f"{LAYOUT_NAME!r}"[:300])
    checksum = meta["checksum"]
    if not (checksum.startswith(CHECKSUM_PREFIX) and len(checksum) == len(CHECKSUM_PREFIX) + 64):
        raise FormatError(f"checksum must be '{CHECKSUM_PREFIX}<64 hex digits>', "
                          f"got {checksum!r}"[:300])
    writer = meta["writer"]
    # the one free text qgen-info prints: no terminal escape sequences, no screenfuls
    if len(writer) > MAX_WRITER_CHARS or not writer.isprintable():
        raise FormatError(f"writer must be at most {MAX_WRITER_CHARS} printable characters, "
                          f"got {writer[:40]!r}{'...' if len(writer) > 40 else ''}")
    return {"bits": int(meta["bits"]), "checksum": checksum,
            "version": int(meta["format_version"])}


# ---- tensors ----------------------------------------------------------------------------------


def _expected_tensors(layers: list[dict[str, Any]], sensing: dict[str, tuple[int, ...]],
                      bits: int, granularity: str, version: int) -> dict[str, tuple[str, tuple]]:
    """Every tensor the metadata implies, with its safetensors dtype and exact shape (the
    sensing tensors float16 in a version-3 file, float32 before)."""
    expected: dict[str, tuple[str, tuple]] = {}
    for layer in layers:
        if layer["kind"] == RESHAPE_KIND:
            continue
        prefix = f"{GENERATOR_PREFIX}{layer['name']}."
        c_out = output_channels(layer["kind"], layer["weight_shape"])
        scale_len = c_out if granularity == "channel" else 1
        expected[prefix + "codes"] = ("U8", (packed_nbytes(layer["weight_shape"], bits),))
        expected[prefix + "scale"] = ("F32", (scale_len,))
        expected[prefix + "zero"] = ("F32", (scale_len,))
        expected[prefix + "alpha"] = ("F32", (c_out,))
        expected[prefix + "beta"] = ("F32", (c_out,))
    sensing_dtype = "F16" if version >= SENSING_F16_VERSION else "F32"
    for name, shape in sensing.items():
        expected[SENSING_PREFIX + name] = (sensing_dtype, shape)
    return expected


_DTYPE_NAMES = {"U8": "uint8", "F32": "float32", "F16": "float16"}
_FRAMEWORKS = {"torch": "pt", "numpy": "numpy"}


def _check_tensor_index(index: dict[str, tuple[str, list[int]]],
                        expected: dict[str, tuple[str, tuple]]) -> None:
    missing = sorted(set(expected) - set(index))
    if missing:
        raise FormatError(f"missing tensor {missing[0]!r}"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    unknown = sorted(set(index) - set(expected))
    if unknown:
        raise FormatError(f"unknown tensor {unknown[0]!r}"[:200]
                          + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""))
    for name, (dtype, shape) in expected.items():
        file_dtype, file_shape = index[name]
        if file_dtype != dtype:
            raise FormatError(f"tensor {name!r} has dtype {file_dtype}, expected "
                              f"{_DTYPE_NAMES[dtype]}")
        if tuple(file_shape) != tuple(shape):
            what = "packed codes" if name.endswith(".codes") else "tensor"
            raise FormatError(f"{what} {name!r} has shape {list(file_shape)}, expected "
                              f"{list(shape)}")


def _check_values(name: str, tensor: Any) -> None:
    value = np.asarray(tensor)  # a zero-copy view of a CPU torch tensor
    if value.dtype not in (np.float32, np.float16):  # float16 stays below the limit by range
        return
    if not bool(np.isfinite(value).all()):
        raise FormatError(f"tensor {name!r} holds non-finite values (NaN or infinity)")
    if name.endswith(".scale") and not bool((value > 0).all()):
        raise FormatError(f"tensor {name!r} holds non-positive scales")
    biggest = float(np.abs(value).max()) if value.size else 0.0
    if biggest > MAX_ABS_VALUE:
        raise FormatError(f"tensor {name!r} holds a value of magnitude {biggest:.3g}, above the "
                          f"{MAX_ABS_VALUE:.0f} limit")


def _check_weight_range(layer: PackedLayer, bits: int) -> None:
    """The largest decoded weight ``scale * |code - zero|`` over all codes ``0 .. 2^bits - 1``."""
    zero = np.asarray(layer.zero)
    reach = np.maximum(np.abs(zero), np.abs(np.float32(2**bits - 1) - zero))
    biggest = float((np.asarray(layer.scale, np.float64) * reach.astype(np.float64)).max())
    if biggest > MAX_ABS_VALUE:
        raise FormatError(f"layer {layer.name!r} decodes to weights of magnitude up to "
                          f"{biggest:.3g}, above the {MAX_ABS_VALUE:.0f} limit")


def _build_layers(layers: list[dict[str, Any]], tensors: dict[str, Any], bits: int
                  ) -> list[GeneratorLayer]:
    built: list[GeneratorLayer] = []
    for fields in layers:
        if fields["kind"] == RESHAPE_KIND:
            built.append(ReshapeLayer(fields["name"], fields["shape"]))
            continue
        prefix = f"{GENERATOR_PREFIX}{fields['name']}."
        layer = PackedLayer(**fields, **{f: tensors[prefix + f] for f in LAYER_TENSOR_FIELDS})
        if not padding_is_zero(layer.codes, layer.weight_shape, bits):
            raise FormatError(f"tensor {prefix + 'codes'!r} has non-zero padding bits")
        _check_weight_range(layer, bits)
        built.append(layer)
    return built


# ---- entry point ------------------------------------------------------------------------------


def read_qgen(path: str | Path, tensors: str = "torch") -> QgenFile:
    """Read and validate a ``.qgen`` file (see the module docstring for the checks); its
    tensors as ``torch`` tensors or, without importing torch, as ``numpy`` arrays."""
    if tensors not in _FRAMEWORKS:
        raise ValueError(f"tensors must be one of {tuple(_FRAMEWORKS)}, got {tensors!r}")
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{str(path)!r} does not exist (or is not a file)")
    try:
        return _read(path, _FRAMEWORKS[tensors])
    except FormatError as exc:
        message = str(exc)
        if message.startswith(repr(str(path))):
            raise
        raise _fail(path, message) from None


def _parse_values(meta: dict[str, str], bits: int) -> dict[str, Any]:
    """The JSON metadata values, each checked against the model description's schema."""
    values = {k: bounded_json.loads(meta[k], k)
              for k in ("quantizer", "config", "layers", "sensing", "solver", "training")}
    metadata.check_object(values["quantizer"], metadata.QUANTIZER, "metadata quantizer")
    metadata.check_model_description(values["config"], values["solver"])
    metadata.check_object(values["training"], metadata.TRAINING, "metadata training",
                          allow_unknown=True)
    if values["config"]["bits"] != bits:
        raise FormatError(f"metadata config bits {values['config']['bits']} disagree with the "
                          f"file's bits {bits}")
    return values


def _read(path: Path, framework: str) -> QgenFile:
    data_start = _check_header_length(path)
    _check_header_keys(path, data_start)
    try:
        with safe_open(str(path), framework=framework, device="cpu") as container:
            meta = container.metadata()
            index = {}
            for name in container.keys():
                view = container.get_slice(name)
                index[name] = (view.get_dtype(), list(view.get_shape()))
            simple = _parse_metadata(meta)
            bits = simple["bits"]
            values = _parse_values(meta, bits)
            quantizer = values["quantizer"]
            granularity = quantizer["granularity"]
            layers = _parse_layers(values["layers"])
            sensing_shapes = _parse_sensing(values["sensing"])
            _check_tensor_index(index, _expected_tensors(layers, sensing_shapes, bits,
                                                         granularity, simple["version"]))
            config = values["config"]
            plan = chain_plan(layers, config["latent_dim"], config["image_shape"])
            covered = meta if simple["version"] >= 2 else None
            if file_checksum(path, data_start, covered) != simple["checksum"]:
                raise FormatError("checksum mismatch: the file is corrupt or was edited")
            tensors = {}
            for name in index:
                tensors[name] = container.get_tensor(name)
                _check_values(name, tensors[name])
    except (SafetensorError, OSError) as exc:
        raise FormatError(f"not a valid safetensors file ({_first_line(exc)})"[:400]) from None
    return QgenFile(
        bits=bits,
        layers=_build_layers(layers, tensors, bits),
        sensing={k: tensors[SENSING_PREFIX + k] for k in sensing_shapes},
        config=values["config"],
        quantizer=quantizer,
        solver=values["solver"],
        training=values["training"],
        format_version=simple["version"],
        plan=plan,
        layout=LAYOUT_NAME,
        writer=meta["writer"],
        metadata=dict(meta),
    )
