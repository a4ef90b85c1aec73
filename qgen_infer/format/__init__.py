"""The ``.qgen`` file: a safetensors container of packed 1-4-bit codes, scales, zeros, folded
epilogues and the sensing network (fp32, or fp16 in format version 3), with JSON metadata;
strict validation on read.

The format knows bytes and metadata, not models: it never imports the networks or training code.
The canonical packed layout and every tensor name and metadata key are specified in
``docs/FORMAT.md``.
"""

# PEP 562 lazy attributes: the reader and the schema do not import torch (qgen-info reads a file
# without it); the packing and the writer do, on first use.
import importlib as _importlib
from typing import Any as _Any

_LAZY = {
    "FORMAT_NAME": "schema", "FORMAT_VERSION": "schema", "LAYOUT_NAME": "schema",
    "PackedLayer": "schema", "QgenFile": "schema", "ReshapeLayer": "schema",
    "pack_codes": "packing", "packed_nbytes": "layout", "unpack_codes": "packing",
    "read_qgen": "reader", "serialize": "writer", "write_qgen": "writer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(f"qgen_infer.format.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qgen_infer.format' has no attribute {name!r}")
