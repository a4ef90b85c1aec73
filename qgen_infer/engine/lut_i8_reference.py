"""Plain-PyTorch reference of the AVX2 integer-table kernels (``_cpu.gemm_planes_i8``).

The math and the rounding are those of csrc/qgen_cpu.h, "The integer-table path": per activation
row, the 16 signed sums of every group of 4 inputs,
``T[g][i] = sum_e (bit e of i ? +x[4g+e] : -x[4g+e])`` (fp32, adds in order e = 0..3), rounded
to ``q = rint(T * (127 / max|T|))`` with one scale ``s = max|T| / 127`` per row; then
``acc[m, n] = s_m * sum_b 2^b sum_g q_m[g][idx_b(n, g)]``, idx_b the 4 plane-b bits of the
group's codes. The kernel's integer sums equal :func:`integer_sums` exactly.
"""

from __future__ import annotations

import torch

GROUP = 4


def _padded(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dimension to a multiple (the kernel pads k to 8: pairs of groups)."""
    extra = -t.shape[-1] % multiple
    return torch.nn.functional.pad(t, (0, extra)) if extra else t


def group_tables(x: torch.Tensor) -> torch.Tensor:
    """fp32 tables ``[M, G, 16]`` of float32 ``x [M, K]`` (G = 2 ceil(K / 8))."""
    v = _padded(x.float(), 2 * GROUP).reshape(x.shape[0], -1, GROUP)
    i = torch.arange(16)
    signs = [((i >> e) & 1).float() * 2 - 1 for e in range(GROUP)]
    t = signs[0] * v[..., 0:1]
    for e in range(1, GROUP):  # one rounding per add, in the kernel's order
        t = t + signs[e] * v[..., e:e + 1]
    return t


def quantized_tables(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int tables q ``[M, G, 16]`` in [-127, 127], row scales s ``[M]`` float32)."""
    t = group_tables(x)
    amax = t.abs().amax(dim=(1, 2)) if t.shape[1] else torch.zeros(x.shape[0])
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    q = torch.round(t * inv[:, None, None]).to(torch.int64)  # half to even, as vcvtps2dq
    return q, amax / 127.0


def group_indices(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Plane-b LUT indices ``[bits, N, G]`` of uint8 codes ``[N, K]``."""
    c = _padded(codes.to(torch.int64), 2 * GROUP).reshape(codes.shape[0], -1, GROUP)
    weights = torch.tensor([1 << e for e in range(GROUP)])
    return torch.stack([(((c >> b) & 1) * weights).sum(-1) for b in range(bits)])


def integer_sums(x: torch.Tensor, codes: torch.Tensor, bits: int) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """(int64 ``sum_b 2^b sum_g q[m, g, idx_b(n, g)]`` ``[M, N]``, row scales ``[M]``)."""
    q, s = quantized_tables(x)
    idx = group_indices(codes, bits)
    g = torch.arange(q.shape[1])
    out = torch.zeros(x.shape[0], codes.shape[0], dtype=torch.int64)
    for b in range(bits):
        out += (q[:, g[None, :], idx[b]].sum(-1)) << b  # [M, N, G] gathered, summed over g
    return out, s


def gemm_i8_reference(x: torch.Tensor, codes: torch.Tensor, bits: int, scale: torch.Tensor,
                      zero: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` with W = scale (codes - zero) through the int8 tables (no activation)."""
    sums, s = integer_sums(x, codes, bits)
    acc = s[:, None] * sums.float()
    xs = x.double().sum(1).float()
    zc2 = float((1 << bits) - 1) - 2.0 * zero
    return (0.5 * scale)[None, :] * (acc + zc2[None, :] * xs[:, None])
