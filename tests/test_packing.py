"""The canonical packed layout: the production packer against an independent bitarray packer
written from docs/FORMAT.md, round trips, sizes, and the worked examples in the document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from bitarray import bitarray
from bitarray.util import int2ba
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen_infer.format import pack_codes, packed_nbytes, unpack_codes
from qgen_infer.format.packing import padding_is_zero

FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
BITS = (1, 2, 3, 4)


def reference_pack(codes: list[int], bits: int) -> bytes:
    """docs/FORMAT.md §1, literally: each code LSB first into one little-endian bit stream (bit i
    = bit i % 8 of byte i // 8), zero-padded to a multiple of 32 bits."""
    stream = bitarray(endian="little")
    for code in codes:
        stream.extend(int2ba(code, length=bits, endian="little"))
    stream.extend([0] * (-len(stream) % 32))
    return stream.tobytes()


def every_code_then_random(numel: int, bits: int, seed: int) -> torch.Tensor:
    """Codes that contain every value 0..2^bits-1 (when there is room), then random ones."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (numel,), generator=g, dtype=torch.uint8)
    ladder = torch.arange(2**bits, dtype=torch.uint8)[:numel]
    codes[: ladder.numel()] = ladder
    return codes[torch.randperm(numel, generator=g)]


DIMS = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 31, 32, 33, 97]),
                 st.integers(1, 40))
SHAPES = st.lists(DIMS, min_size=1, max_size=4).filter(
    lambda s: torch.Size(s).numel() <= 20_000)


@pytest.mark.parametrize("bits", BITS)
@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_pack_matches_bitarray_and_round_trips(bits: int, shape: list[int], seed: int) -> None:
    codes = every_code_then_random(torch.Size(shape).numel(), bits, seed).reshape(shape)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.ndim == 1
    assert packed.numel() == packed_nbytes(shape, bits)
    assert packed.numel() % 4 == 0
    assert bytes(packed.tolist()) == reference_pack(codes.reshape(-1).tolist(), bits)
    assert padding_is_zero(packed, shape, bits)
    out = unpack_codes(packed, shape, bits)
    assert out.dtype == torch.uint8 and list(out.shape) == shape
    assert torch.equal(out, codes)


@pytest.mark.parametrize("bits", BITS)
def test_every_code_value_survives(bits: int) -> None:
    codes = torch.arange(2**bits, dtype=torch.uint8).repeat(7)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), codes.shape, bits), codes)


@pytest.mark.parametrize("bits", BITS)
def test_large_tensor_is_vectorised(bits: int) -> None:
    # 300k codes in well under a second only if no Python loop runs per element
    codes = every_code_then_random(300_007, bits, 1).reshape(1, 300_007)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), codes.shape, bits), codes)


@pytest.mark.parametrize(("shape", "bits", "expected"), [
    ([1], 1, 4), ([32], 1, 4), ([33], 1, 8), ([11], 3, 8), ([10], 3, 4), ([8], 4, 4),
    ([3, 5, 7], 3, 40), ([500, 784], 4, 196_000), ([0], 2, 0), ([2**60, 0], 3, 0),
])
def test_packed_nbytes(shape: list[int], bits: int, expected: int) -> None:
    assert packed_nbytes(shape, bits) == expected


def _documented_examples() -> list[tuple[int, list[int], bytes]]:
    text = FORMAT_MD.read_text()
    block = text.split("<!-- packing-examples")[1].split("<!-- end packing-examples")[0]
    rows = re.findall(r"^\| (\d) \| \[([\d, ]+)\] \| ((?:0x[0-9a-f]{2} ?)+)\|$", block, re.M)
    return [(int(b), [int(c) for c in codes.split(",")],
             bytes(int(x, 16) for x in hexes.split())) for b, codes, hexes in rows]


def test_format_md_examples_match_both_packers() -> None:
    examples = _documented_examples()
    assert sorted(b for b, _, _ in examples) == list(BITS)
    for bits, codes, expected in examples:
        assert reference_pack(codes, bits) == expected
        packed = pack_codes(torch.tensor(codes, dtype=torch.uint8), bits)
        assert bytes(packed.tolist()) == expected


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="lie in"):
        pack_codes(torch.tensor([8], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        pack_codes(torch.tensor([1], dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.tensor([1], dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="take 4 bytes"):
        unpack_codes(torch.zeros(8, dtype=torch.uint8), [3], 2)
    with pytest.raises(ValueError, match="bits"):
        packed_nbytes([3], 0)


def test_nonzero_padding_is_detected() -> None:
    packed = pack_codes(torch.tensor([7, 7, 7], dtype=torch.uint8), 3)  # 9 bits used
    assert padding_is_zero(packed, [3], 3)
    packed[1] |= 0b10  # stream bit 9: the first padding bit
    assert not padding_is_zero(packed, [3], 3)
    packed[1] &= 0b01
    packed[3] = 0x80  # the last padding bit
    assert not padding_is_zero(packed, [3], 3)
