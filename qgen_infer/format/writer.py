"""Write a ``.qgen`` file: a safetensors container with qgen metadata and a sha256 checksum.

The checksum covers the other metadata and the safetensors *data region* (every byte after the
header; see :mod:`qgen_infer.format.digest`), so it can live inside the header: the file is
serialised once with a placeholder to learn the data bytes, then again with the real digest.
safetensors lays tensors out by dtype and name only, so the data region does not depend on the
metadata; the second pass is checked to reproduce it.

safetensors writes the header's keys in a hash map's order, which differs from call to call, so
the header is then rewritten with sorted keys: one checkpoint always exports to the same bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import safetensors.torch
import torch

from qgen_infer.atomic import write_atomic
from qgen_infer.format import bounded_json
from qgen_infer.format.digest import checksum
from qgen_infer.format.packing import packed_nbytes
from qgen_infer.format.schema import (
    CHECKSUM_PREFIX,
    FORMAT_NAME,
    LAYOUT_NAME,
    SENSING_PREFIX,
    PackedLayer,
    QgenFile,
)

_HEADER_LENGTH = struct.Struct("<Q")


def data_region(blob: bytes) -> memoryview:
    """The bytes after the 8-byte length and the JSON header of a safetensors blob."""
    (header_len,) = _HEADER_LENGTH.unpack_from(blob)
    return memoryview(blob)[_HEADER_LENGTH.size + header_len:]


def _sorted_header(blob: bytes) -> bytes:
    """``blob`` with its JSON header's keys sorted (at every level) and padded with spaces to a
    multiple of 8 bytes, as safetensors aligns the data region; the data bytes are untouched."""
    (header_len,) = _HEADER_LENGTH.unpack_from(blob)
    start = _HEADER_LENGTH.size
    header = json.loads(blob[start:start + header_len])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return _HEADER_LENGTH.pack(len(text)) + text + blob[start + header_len:]


def file_metadata(qf: QgenFile, digest: str) -> dict[str, str]:
    """The ``__metadata__`` strings for ``qf`` (see ``docs/FORMAT.md``)."""
    return {
        "format": FORMAT_NAME,
        "format_version": str(qf.version_to_write),
        "bits": str(qf.bits),
        "layout": LAYOUT_NAME,
        "quantizer": bounded_json.dumps(qf.quantizer),
        "config": bounded_json.dumps(qf.config),
        "layers": bounded_json.dumps([layer.description() for layer in qf.layers]),
        "sensing": bounded_json.dumps({k: list(v.shape) for k, v in qf.sensing.items()}),
        "solver": bounded_json.dumps(qf.solver),
        "training": bounded_json.dumps(qf.training),
        "writer": qf.writer,
        "checksum": digest,
    }


def file_tensors(qf: QgenFile) -> dict[str, torch.Tensor]:
    """Every tensor of ``qf`` under its file name, contiguous on the CPU."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in qf.packed_layers:
        _check_layer(layer, qf.bits)
        tensors.update(layer.tensors())
    dtype = torch.float16 if qf.sensing_dtype == "fp16" else torch.float32
    for name, value in qf.sensing.items():
        tensors[SENSING_PREFIX + name] = value.detach().to(dtype)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _check_layer(layer: PackedLayer, bits: int) -> None:
    """Writer-side sanity: a bug upstream must not produce a file the reader would reject."""
    expected = packed_nbytes(layer.weight_shape, bits)
    if layer.codes.dtype != torch.uint8 or layer.codes.shape != (expected,):
        raise ValueError(f"layer {layer.name}: packed codes must be uint8 [{expected}], got "
                         f"{layer.codes.dtype} {list(layer.codes.shape)}")
    for field in ("scale", "zero", "alpha", "beta"):
        value = getattr(layer, field)
        if value.dtype != torch.float32 or not torch.isfinite(value).all():
            raise ValueError(f"layer {layer.name}: {field} must be finite float32")


def serialize(qf: QgenFile) -> bytes:
    """The complete ``.qgen`` file as bytes."""
    tensors = file_tensors(qf)
    draft_metadata = file_metadata(qf, CHECKSUM_PREFIX + "0" * 64)
    draft = safetensors.torch.save(tensors, draft_metadata)
    data = bytes(data_region(draft))
    blob = _sorted_header(
        safetensors.torch.save(tensors, file_metadata(qf, checksum(data, draft_metadata))))
    if bytes(data_region(blob)) != data:  # would mean safetensors' layout depends on metadata
        raise RuntimeError("safetensors data region changed between passes; checksum invalid")
    return blob


def write_qgen(path: str | Path, qf: QgenFile) -> int:
    """Write ``qf`` to ``path`` atomically (temp file + rename); returns the file size in bytes.
    A write that fails (no such folder, no permission, disk full) is one ``QgenError`` line."""
    blob = serialize(qf)
    write_atomic(path, lambda fh: fh.write(blob))
    return len(blob)
