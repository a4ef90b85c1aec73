"""The canonical packed layout of k-bit weight codes (k = 1..4), specified in ``docs/FORMAT.md``.

A weight tensor of any shape is flattened row-major (PyTorch order) into codes ``c[0..n)``, each an
unsigned integer in ``[0, 2**k)``. The codes form ONE continuous little-endian bit stream:

* code ``j`` occupies stream bits ``[j*k, (j+1)*k)``, its least significant bit first;
* stream bit ``i`` is bit ``i % 8`` (LSB = bit 0) of byte ``i // 8``;
* the stream is padded with zero bits to a multiple of 32 bits, so a kernel may read it as
  little-endian uint32 words: ``packed_nbytes(shape, k) = 4 * ceil(n * k / 32)``.

A 3-bit code therefore costs exactly 3 bits; codes straddle byte (and word) boundaries, and the
padding is at most 31 bits per tensor. The value of a code is ``scale * (code - zero)``
(:func:`qgen_infer.quant.dequantize`, the only code->value map); packing never touches values.

Both directions are vectorised: codes are expanded to a ``[n, k]`` matrix of bits (bit ``b`` of code
``j`` is stream bit ``j*k + b``), which row-major *is* the stream; the stream is cut into bytes of 8
bits. This handles every width, 3 included, with one code path and no Python loop over elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qgen_infer.format.layout import (
    PACKED_BITS,
    WORD_BITS,
    check_bits,
    packed_nbytes,
    padding_is_zero,
    shape_numel,
)

__all__ = ["PACKED_BITS", "WORD_BITS", "pack_codes", "packed_nbytes", "padding_is_zero",
           "shape_numel", "unpack_codes"]


def _bit_weights(nbits: int, device: torch.device) -> torch.Tensor:
    """``[1, 2, 4, ..., 2**(nbits-1)]`` as int32: sums of weighted bits rebuild an integer."""
    return torch.pow(2, torch.arange(nbits, dtype=torch.int32, device=device)).to(torch.int32)


def _bit_positions(nbits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(nbits, dtype=torch.uint8, device=device)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 ``codes`` (any shape, values in ``[0, 2**bits)``) into the canonical byte stream.

    Returns a 1-D uint8 tensor of ``packed_nbytes(codes.shape, bits)`` bytes on ``codes.device``.
    """
    check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel() and int(flat.max()) >= 2**bits:
        raise ValueError(f"codes must lie in [0, {2**bits}) for {bits}-bit packing, "
                         f"found {int(flat.max())}")
    device = flat.device
    # [n, bits] matrix of bits, LSB first; row-major it is the stream (code j at bits j*k...).
    stream = ((flat.unsqueeze(1) >> _bit_positions(bits, device)) & 1).reshape(-1)
    nbytes = packed_nbytes(codes.shape, bits)
    padding = nbytes * 8 - stream.numel()
    stream = torch.cat([stream, stream.new_zeros(padding)])
    by_byte = stream.reshape(nbytes, 8).to(torch.int32)
    return (by_byte * _bit_weights(8, device)).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, shape: Sequence[int], bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 codes of ``shape`` from the canonical byte stream.

    ``packed`` must be 1-D uint8 of exactly ``packed_nbytes(shape, bits)`` bytes (checked, so a
    wrong length is a ``ValueError``, never a silent mis-read).
    """
    check_bits(bits)
    shape = [int(d) for d in shape]
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise ValueError(f"packed codes must be a 1-D uint8 tensor, got {packed.dtype} "
                         f"with shape {list(packed.shape)}")
    expected = packed_nbytes(shape, bits)
    if packed.numel() != expected:
        raise ValueError(f"{bits}-bit codes of shape {shape} take {expected} bytes, "
                         f"got {packed.numel()}")
    device = packed.device
    n = shape_numel(shape)
    stream = ((packed.unsqueeze(1) >> _bit_positions(8, device)) & 1).reshape(-1)
    by_code = stream[: n * bits].reshape(n, bits).to(torch.int32)
    return (by_code * _bit_weights(bits, device)).sum(dim=1).to(torch.uint8).reshape(shape)
