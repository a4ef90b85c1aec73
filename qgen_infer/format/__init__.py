"""The ``.qgen`` file: a safetensors container of packed 1-4-bit codes, scales, zeros, folded
epilogues and the fp32 sensing network, with JSON metadata; strict validation on read.

The format knows bytes and metadata, not models: it never imports the networks or training code.
The canonical packed layout and every tensor name and metadata key are specified in
``docs/FORMAT.md``.
"""

from qgen_infer.format.packing import pack_codes, packed_nbytes, unpack_codes
from qgen_infer.format.reader import read_qgen
from qgen_infer.format.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LAYOUT_NAME,
    PackedLayer,
    QgenFile,
    ReshapeLayer,
)
from qgen_infer.format.writer import serialize, write_qgen

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LAYOUT_NAME",
    "PackedLayer",
    "QgenFile",
    "ReshapeLayer",
    "pack_codes",
    "packed_nbytes",
    "read_qgen",
    "serialize",
    "unpack_codes",
    "write_qgen",
]
