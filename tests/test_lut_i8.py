"""The integer-table kernels (``_cpu.gemm_planes_i8``: AVX2's 32-column and AVX-512's 64-column
vpshufb tiles) against their plain-PyTorch reference (qgen_infer/engine/lut_i8_reference.py):
integer sums equal exactly on every tier this CPU has, and the product stays within the stated
rounding bound of the exact fp32 product."""

from __future__ import annotations

import os

import pytest
import torch

_cpu = pytest.importorskip("qgen_infer._cpu", reason="CPU extension qgen_infer._cpu not built")
if "avx2" not in _cpu.supported_isas():
    pytest.skip("this CPU/OS lacks AVX2", allow_module_level=True)

from qgen_infer.engine.backend import MatrixWeight, gemm_reference  # noqa: E402
from qgen_infer.engine.lut_i8_reference import (  # noqa: E402
    gemm_i8_reference,
    integer_sums,
)

# ones, sizes off every block (32/64 columns: an odd count of 32-column blocks leaves the AVX-512
# tile a lone last block; 8-entry group pairs; 8/4/2/1-row tiles, 8-row panels), and a reduction
# past one 16-bit run (256 groups = 1024 k)
SHAPES = [(1, 1, 1), (1, 784, 500), (3, 9, 33), (5, 97, 31), (13, 70, 65), (64, 50, 40),
          (2, 2100, 37), (17, 33, 97), (9, 500, 129)]
# the integer-table tiles this CPU runs (avx512vbmi: vpermb + vpdpbusd over the quads layout)
INT_ISAS = [isa for isa in ("avx2", "avx512") if isa in _cpu.supported_isas()] + (
    ["avx512vbmi"] if _cpu.has_vbmi_vnni() else [])


def repack(codes: torch.Tensor, bits: int, isa: str):
    """The codes in ``isa``'s tile layout."""
    fn = _cpu.repack_quads if isa == "avx512vbmi" else _cpu.repack_nibbles
    return fn(codes.numpy(), bits)


def random_case(m: int, k: int, n: int, bits: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    scale = torch.rand(n, generator=gen) + 0.05
    zero = torch.rand(n, generator=gen) * ((1 << bits) - 1)
    return x, codes, scale, zero


@pytest.mark.parametrize("isa", INT_ISAS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_integer_sums_equal_reference(isa: str, bits: int, shape, threads: int) -> None:
    x, codes, _, _ = random_case(*shape, bits, seed=bits * 100 + shape[1])
    nib = repack(codes, bits, isa)
    sums, rs = _cpu.lut_i8_sums(x.numpy(), nib, shape[2], bits, threads=threads, isa=isa)
    ref_sums, ref_s = integer_sums(x, codes, bits)
    assert torch.equal(torch.from_numpy(sums).long(), ref_sums)
    assert torch.equal(torch.from_numpy(rs), ref_s)


@pytest.mark.parametrize("isa", INT_ISAS)
def test_zero_rows_and_extreme_codes(isa: str) -> None:
    x = torch.zeros(3, 40)
    x[1, 5] = -3.0
    codes = torch.full((9, 40), 15, dtype=torch.uint8)
    codes[::2] = 0
    nib = repack(codes, 4, isa)
    sums, rs = _cpu.lut_i8_sums(x.numpy(), nib, 9, 4, isa=isa)
    ref_sums, ref_s = integer_sums(x, codes, 4)
    assert torch.equal(torch.from_numpy(sums).long(), ref_sums)
    assert rs[0] == 0 and (sums[0] == 0).all()
    assert torch.equal(torch.from_numpy(rs), ref_s)


@pytest.mark.parametrize("isa", INT_ISAS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_product_within_rounding_bound(isa: str, bits: int) -> None:
    """|y - exact| <= (2^bits - 1) (K / 4) s / 2 * scale / 2 per element (qgen_cpu.h); the
    observed max relative error (max |y - exact| / max |exact|) is stated: < 2e-2 here."""
    m, k, n = 16, 784, 500
    x, codes, scale, zero = random_case(m, k, n, bits, seed=7 + bits)
    nib = repack(codes, bits, isa)
    y = torch.from_numpy(_cpu.gemm_planes_i8(x.numpy(), nib, n, bits, scale.numpy(),
                                             zero.numpy(), isa=isa))
    exact = gemm_reference(x, MatrixWeight(codes=codes, scale=scale, zero=zero, bits=bits))
    _, s = integer_sums(x[:1], codes[:1], bits)
    _, s = integer_sums(x, codes[:1], bits)
    bound = ((1 << bits) - 1) * (k / 4) * s[:, None] / 2 * (0.5 * scale)[None, :] * 1.001 + 1e-4
    assert ((y - exact).abs() <= bound).all()
    assert (y - exact).abs().max() / exact.abs().max() < 2e-2
    ref = gemm_i8_reference(x, codes, bits, scale, zero)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


def test_epilogue_matches_exact_path_form() -> None:
    """alpha, beta and the activation apply to the integer product as in gemm_planes_f32."""
    x, codes, scale, zero = random_case(4, 200, 70, 1, seed=3)
    nib = _cpu.repack_nibbles(codes.numpy(), 1)
    alpha = torch.rand(70) + 0.5
    beta = torch.randn(70)
    plain = _cpu.gemm_planes_i8(x.numpy(), nib, 70, 1, scale.numpy(), zero.numpy())
    fused = _cpu.gemm_planes_i8(x.numpy(), nib, 70, 1, scale.numpy(), zero.numpy(),
                                alpha.numpy(), beta.numpy(), act=1)
    expect = torch.relu(torch.from_numpy(plain) * alpha + beta)
    torch.testing.assert_close(torch.from_numpy(fused), expect, rtol=1e-5, atol=1e-5)


def test_rejects_bad_inputs() -> None:
    codes = torch.zeros(5, 16, dtype=torch.uint8)
    nib = _cpu.repack_nibbles(codes.numpy(), 2)
    x = torch.zeros(2, 16).numpy()
    one = torch.ones(5).numpy()
    with pytest.raises(ValueError, match="codes must lie"):
        _cpu.repack_nibbles((codes + 4).numpy(), 2)
    with pytest.raises(ValueError, match="nibbles"):
        _cpu.gemm_planes_i8(x, nib[:-1], 5, 2, one, one)
    with pytest.raises(TypeError, match="x must be float32"):
        _cpu.gemm_planes_i8(x.astype("float64"), nib, 5, 2, one, one)
    with pytest.raises(ValueError, match="bits"):
        _cpu.lut_i8_sums(x, nib, 5, 5)
    with pytest.raises(ValueError, match="not the portable tier"):
        _cpu.gemm_planes_i8(x, nib, 5, 2, one, one, isa="portable")
    with pytest.raises(ValueError, match="isa"):
        _cpu.lut_i8_sums(x, nib, 5, 2, isa="sse9")
    if "avx512vbmi" in INT_ISAS:
        with pytest.raises(ValueError, match="quads"):
            _cpu.gemm_planes_i8(x, _cpu.repack_quads(codes.numpy(), 2)[:-1], 5, 2, one, one,
                                isa="avx512vbmi")
        with pytest.raises(ValueError, match="codes must lie"):
            _cpu.repack_quads((codes + 4).numpy(), 2)


@pytest.mark.slow
@pytest.mark.parametrize("isa", [i for i in ("avx2", "avx512") if i in INT_ISAS])
def test_engine_psnr_within_0_01_db_where_auto_uses_int_tables(isa: str) -> None:
    """At every width ``QGEN_CPU_INT_TABLES=auto`` puts on the int8 tables (on AVX2), the
    engine's mean PSNR on the 1,000 MNIST eval images stays within 0.01 dB of the reference
    backend, on each tier's tile (AVX-512's: what ``QGEN_CPU_INT_TABLES=on`` runs there)."""
    import subprocess
    import sys
    from pathlib import Path

    from qgen_infer.engine.cpu_backend import INT_TABLE_AUTO_BITS

    repo = Path(__file__).resolve().parents[1]
    data = repo.parent / "shared" / "data" / "mnist"
    if not (data / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found under {data}")
    # The check is the benchmark script itself, run as a user runs it: it exits 1 when a width
    # that auto puts on the tables is more than 0.01 dB from the reference.
    models = [a for b in INT_TABLE_AUTO_BITS
              for a in ("--model", str(repo / "models" / f"mnist-m25-{b}bit.qgen"))]
    run = subprocess.run([sys.executable, str(repo / "bench" / "psnr_int_tables.py"), *models,
                          "--data-root", str(data), "--isa", isa], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {line for line in run.stdout.splitlines() if line.endswith("| yes | yes |")}
    assert len(rows) == len(INT_TABLE_AUTO_BITS), run.stdout


def test_backend_chooses_int_tables_by_width_and_tier(monkeypatch) -> None:
    """auto: 1-bit weights on the AVX2 tier only; on: every width, on the tier's own tile (the
    portable tier borrows AVX2's); off: none."""
    from qgen_infer.engine.cpu_backend import CpuBackend

    monkeypatch.delenv("QGEN_CPU_INT_TABLES", raising=False)
    assert CpuBackend(isa="avx2").int_table_bits == (1,)
    assert CpuBackend(isa="avx2").kernel_name(1) == "gemm_w1_planes_i8[avx2]"
    if "avx512" in INT_ISAS:  # exact by default there; forced on, the tier's own tile
        assert CpuBackend(isa="avx512").int_table_bits == ()
        on = CpuBackend(isa="avx512", int_tables="on")
        assert on.int_table_isa == ("avx512vbmi" if "avx512vbmi" in INT_ISAS else "avx512")
        assert on.kernel_name(1, True) == f"gemm_t_w1_planes_i8[{on.int_table_isa}]"
    assert CpuBackend(isa="portable").int_table_bits == ()
    assert CpuBackend(isa="portable", int_tables="on").int_table_bits == (1, 2, 3, 4)
    assert CpuBackend(isa="portable", int_tables="on").int_table_isa == "avx2"
    monkeypatch.setenv("QGEN_CPU_INT_TABLES", "off")
    assert CpuBackend(isa="avx2").int_table_bits == ()
    monkeypatch.setenv("QGEN_CPU_INT_TABLES", "sometimes")
    with pytest.raises(ValueError, match="QGEN_CPU_INT_TABLES"):
        CpuBackend(isa="avx2")


@pytest.mark.parametrize("isa", [i for i in ("avx2", "avx512") if i in INT_ISAS])
@pytest.mark.parametrize("dispatch", ["packed", "measured"])
@pytest.mark.parametrize("bits", [1, 3])
def test_backend_products_on_int_tables(isa: str, dispatch: str, bits: int) -> None:
    """On each tier's tile (AVX-512: the VBMI/VNNI one where the CPU has it), gemm, gemm_t and the
    gradient through the epilogue on the int8 tables stay within the
    tables' rounding of the reference: max error < 1e-2 of max (|rows| @ |W|) (the products'
    scale without cancellation, which the per-row table scale follows), also when the
    dispatcher measures them against the dense path; the forward equals the kernel's reference."""
    from qgen_infer.engine.backend import Epilogue, gemm_t_reference
    from qgen_infer.engine.cpu_backend import CpuBackend
    from qgen_infer.engine.cpu_dispatch import CostTable

    m, k, n = 9, 130, 70
    x, codes, scale, zero = random_case(m, k, n, bits, seed=bits)
    w = MatrixWeight(codes=codes, scale=scale, zero=zero, bits=bits)
    wabs = w.dequantize().abs()
    be = CpuBackend(isa=isa, threads=1, dispatch=dispatch, cost_table=CostTable(None),
                    int_tables="on")
    p = be.prepare(w)
    assert p.table_codes is not None and "planes_i8" in be.kernel_name(bits)
    g = torch.randn(m, n, generator=torch.Generator().manual_seed(1))

    def err(a: torch.Tensor, b: torch.Tensor, size: torch.Tensor) -> float:
        return float((a - b).abs().max() / size.max())

    y = be.gemm(x, p)
    assert err(y, gemm_reference(x, w), x.abs() @ wabs.t()) < 1e-2
    if dispatch == "packed":
        torch.testing.assert_close(y, gemm_i8_reference(x, codes, bits, scale, zero),
                                   rtol=1e-5, atol=1e-4)
    assert err(be.gemm_t(g, p), gemm_t_reference(g, w), g.abs() @ wabs) < 1e-2
    ep = Epilogue(torch.rand(n) + 0.5, torch.randn(n), "tanh", 0.01)
    xr = x.clone().requires_grad_(True)
    y_ref = gemm_reference(xr, w, ep)
    y_ref.backward(g)
    y = be.gemm(x, p, ep)
    assert err(y, y_ref.detach(), ep.alpha * (x.abs() @ wabs.t())) < 1e-2  # tanh: 1-Lipschitz
    h = g * ep.alpha * (1 - y_ref.detach() ** 2)
    assert err(be.gemm_t_through_epilogue(g, y_ref.detach(), p, ep), xr.grad, h.abs() @ wabs) \
        < 1e-2
    if dispatch == "measured":
        assert all("int8-tables" in c["context"] for c in be.dispatch_report()["choices"])


@pytest.mark.parametrize("isa", INT_ISAS)
@pytest.mark.parametrize("shape", [(8, 2100, 600), (40, 1000, 300)],
                         ids=["by-columns", "by-rows"])
def test_two_threads_give_the_same_integers(isa: str, shape) -> None:
    """Products large enough for the driver's 2-thread split (> 3.2e7 bit-products), in both of
    its splits (column blocks for M < 32, row panels otherwise), equal the reference exactly.
    (Items go to whichever thread is free: on a busy machine the caller may run them all.)"""
    x, codes, _, _ = random_case(*shape, 4, seed=5)
    nib = repack(codes, 4, isa)
    sums, rs = _cpu.lut_i8_sums(x.numpy(), nib, shape[2], 4, threads=2, isa=isa)
    ref_sums, ref_s = integer_sums(x, codes, 4)
    assert torch.equal(torch.from_numpy(sums).long(), ref_sums)
    assert torch.equal(torch.from_numpy(rs), ref_s)


@pytest.mark.skipif(not _cpu.has_vbmi_vnni(), reason="this CPU lacks AVX-512 VBMI/VNNI")
@pytest.mark.parametrize("bits", [1, 3])
def test_quads_layout_matches_its_definition(bits: int) -> None:
    """byte 4c + j of [block][chunk][plane] = idx_b(col 16 block + c, group 4 chunk + j) + 16 j
    (qgen_cpu.h), padding columns and k as idx 0, on sizes off 16 columns and 16 k."""
    n, k = 21, 37
    codes = torch.randint(0, 1 << bits, (n, k), generator=torch.Generator().manual_seed(bits),
                          dtype=torch.uint8)
    quads = torch.from_numpy(_cpu.repack_quads(codes.numpy(), bits))
    c16, q4 = -(-n // 16), -(-k // 16)
    padded = torch.zeros(c16 * 16, q4 * 16, dtype=torch.long)
    padded[:n, :k] = codes.long()
    expect = torch.empty(c16, q4, bits, 64, dtype=torch.long)
    for b in range(bits):
        plane = (padded >> b) & 1  # [cols, k]
        idx = (plane.reshape(c16 * 16, q4 * 4, 4) << torch.arange(4)).sum(-1)  # [cols, groups]
        idx = idx + 16 * (torch.arange(q4 * 4) % 4)
        # [block, c, chunk, j] -> [block, chunk, c, j]
        expect[:, :, b] = idx.reshape(c16, 16, q4, 4).permute(0, 2, 1, 3).reshape(c16, q4, 64)
    assert torch.equal(quads.long().reshape(c16, q4, bits, 64), expect)
    assert _cpu.quads_bytes(n, k, bits) == quads.numel()
