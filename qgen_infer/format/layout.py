"""The packed layout's sizes, torch-free: what the reader checks a file's byte counts and padding
against (the layout itself is specified in :mod:`qgen_infer.format.packing` and
``docs/FORMAT.md``; the packing there needs torch, these checks must not, for ``qgen-info``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PACKED_BITS = (1, 2, 3, 4)
WORD_BITS = 32  # the stream is padded to whole little-endian uint32 words


def check_bits(bits: int) -> None:
    if bits not in PACKED_BITS:
        raise ValueError(f"bits must be one of {PACKED_BITS}, got {bits!r}")


def shape_numel(shape: Sequence[int]) -> int:
    """The number of elements of ``shape`` as an exact Python int (no int64 overflow)."""
    n = 1
    for d in shape:
        if int(d) < 0:
            raise ValueError(f"negative dimension in shape {list(shape)}")
        n *= int(d)
    return n


def packed_nbytes(shape: Sequence[int], bits: int) -> int:
    """Bytes of the packed codes of a tensor of ``shape``: ``4 * ceil(numel * bits / 32)``."""
    check_bits(bits)
    stream_bits = shape_numel(shape) * bits
    return 4 * (-(-stream_bits // WORD_BITS))


def padding_is_zero(packed: Any, shape: Sequence[int], bits: int) -> bool:
    """Whether the stream's padding bits (after the last code) are zero, as the format demands
    (``packed``: a 1-D uint8 torch tensor or numpy array)."""
    used_bits = shape_numel(shape) * bits
    full_bytes, rest = divmod(used_bits, 8)
    if rest and int(packed[full_bytes]) >> rest:
        return False
    tail_start = full_bytes + (1 if rest else 0)
    return not bool(packed[tail_start:].any())
