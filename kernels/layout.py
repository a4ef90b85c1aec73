"""The ``kpack`` GPU layout: codes of each weight row packed along K into int32 words.

Repacked once at load time from the canonical codes (uint8 ``[N, K]``, values in ``[0, 2**bits)``);
the ``.qgen`` file never holds this layout.

Layout (``words``: int32, contiguous, shape ``[kpack_rows(K, bits), N]``):

* bits 1, 2, 4: ``CPW = 32 // bits`` codes per word. Word ``words[w, n]`` holds the codes
  ``c[n, w*CPW + j]`` for ``j = 0 .. CPW-1`` in bits ``[j*bits, (j+1)*bits)`` (LSB first). Rows
  of words are K-major and N is the contiguous axis, so a tile's threads that walk N read adjacent
  words (coalesced), and ``k // CPW``, ``k % CPW`` are a shift and a mask.
* bits 3: two planes stacked along the first axis. Rows ``[0, ceil(K/16))`` are the low 2 bits of
  every code packed as the 2-bit layout above (16 per word); the following ``ceil(K/32)`` rows are
  the high bit packed as the 1-bit layout (32 per word). ``c = lo | (hi << 2)``. Both planes have a
  power-of-two codes-per-word, and 3 bits really cost 3 bits (plus padding of K to 32).

Codes past K in the last word are 0. Kernels mask the activations (forward) or the output columns
(transposed product) at ``k >= K``, so the padding never contributes.

Row stride: ``PackedKWords.from_codes`` stores the ``[rows, N]`` words as a view of a
``[rows, ldw]`` buffer, ``ldw = N`` rounded up to 16 words (``row_stride``), and kernels address
rows by ``words.stride(0)``. Every row then starts 64-byte aligned and Triton sees a stride
divisible by 16, so its loads along N vectorise; with N = 500 (the MNIST layers) they did not,
and those products ran 2-4x slower on an H200 than the aligned 784-wide ones (2026-11-30).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (1, 2, 3, 4)


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")


def kpack_rows(k: int, bits: int) -> int:
    """Rows of int32 words that ``kpack`` uses for ``K = k`` (both planes for 3 bits)."""
    _check_bits(bits)
    if bits == 3:
        return -(-k // 16) + -(-k // 32)
    return -(-k // (32 // bits))


def row_stride(n: int) -> int:
    """Words per row of the ``kpack`` buffer: N rounded up to a multiple of 16."""
    return -(-n // 16) * 16


def _pack_plane(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 ``[N, K]`` codes (< 2**bits) -> int32 ``[ceil(K/CPW), N]`` words (module docstring)."""
    n, k = codes.shape
    cpw = 32 // bits
    rows = -(-k // cpw)
    padded = torch.zeros((n, rows * cpw), dtype=torch.int64, device=codes.device)
    padded[:, :k] = codes.to(torch.int64)
    shifts = torch.arange(cpw, device=codes.device, dtype=torch.int64) * bits
    words = (padded.view(n, rows, cpw) << shifts).sum(dim=-1)  # in [0, 2**32): exact in int64
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret as two's complement
    return words.to(torch.int32).t().contiguous()


def pack_kwords(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Canonical uint8 codes ``[N, K]`` -> ``kpack`` int32 words ``[kpack_rows(K, bits), N]``."""
    _check_bits(bits)
    if codes.dtype != torch.uint8 or codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D uint8 tensor, got {codes.dtype} with shape "
                         f"{tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ValueError(f"codes must be < 2**bits = {2**bits}, found {int(codes.max())}")
    if bits == 3:
        return torch.cat([_pack_plane(codes & 3, 2), _pack_plane(codes >> 2, 1)], dim=0)
    return _pack_plane(codes, bits)


def _unpack_plane(words: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    cpw = 32 // bits
    shifts = torch.arange(cpw, device=words.device, dtype=torch.int64) * bits
    w = words.t().to(torch.int64) & 0xFFFFFFFF  # [N, rows], unsigned
    codes = (w[:, :, None] >> shifts) & (2**bits - 1)
    return codes.reshape(w.shape[0], -1)[:, :k].to(torch.uint8)


def unpack_kwords(words: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_kwords`` (tests and debugging only): int32 words -> uint8 ``[N, K]``."""
    _check_bits(bits)
    if bits == 3:
        lo_rows = -(-k // 16)
        return _unpack_plane(words[:lo_rows], k, 2) | (_unpack_plane(words[lo_rows:], k, 1) << 2)
    return _unpack_plane(words, k, bits)


def dequantize_kwords(w: PackedKWords) -> torch.Tensor:
    """fp64 ``W[n, k] = scale[n] (c[n, k] - zero[n])`` decoded from the words by plain torch, on
    the CPU (references only)."""
    codes = unpack_kwords(w.words.cpu(), w.k, w.bits).to(torch.float64)
    return w.scale.cpu().double()[:, None] * (codes - w.zero.cpu().double()[:, None])


@dataclass
class PackedKWords:
    """A weight ``W[n, k] = scale[n] * (c[n, k] - zero[n])`` in the ``kpack`` layout.

    ``words``: int32 ``[kpack_rows(k, bits), n]`` with unit column stride and any row stride
    (``from_codes`` pads it to ``row_stride(n)``); ``scale``, ``zero``: float32 ``[n]``; ``bits``
    in 1..4; ``k``: the unpadded K. All tensors on one device.
    """

    words: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    k: int

    tensor_data_names = ("words", "scale", "zero")

    @property
    def n(self) -> int:
        return int(self.scale.shape[0])

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   device: torch.device | str | None = None) -> PackedKWords:
        """Repack canonical codes (uint8 ``[N, K]``) once; ``device`` defaults to the codes'."""
        device = codes.device if device is None else torch.device(device)
        n, k = codes.shape
        if scale.shape != (n,) or zero.shape != (n,):
            raise ValueError(f"scale and zero must have shape ({n},), got {tuple(scale.shape)} "
                             f"and {tuple(zero.shape)}")
        words = pack_kwords(codes.cpu(), bits)
        buffer = torch.zeros((words.shape[0], row_stride(n)), dtype=torch.int32, device=device)
        buffer[:, :n] = words.to(device)
        return cls(buffer[:, :n], scale.to(device, torch.float32).contiguous(),
                   zero.to(device, torch.float32).contiguous(), bits, int(k))

    def nbytes(self) -> int:
        """Bytes a product reads for the weight: packed words (without the row padding, which
        no kernel reads) plus scale and zero."""
        return (self.words.numel() + self.scale.numel() + self.zero.numel()) * 4
