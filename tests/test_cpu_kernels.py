"""The CPU backend (``qgen_infer._cpu``) against the contract's oracle, on every ISA tier the
machine supports.

Tolerances (fp32 accumulation everywhere):

* norm-wise: ``max|y - ref| / max|ref| < 1e-5`` on the linear part (activation "none");
* element-wise: ``|y - ref| <= 1e-5 * bound + 1e-6 * |beta|`` with
  ``bound[m, n] = |alpha[n]| * sum_k |x[m, k]| * range[n]``, ``range[n] = scale[n] *
  max(zero[n], 2^bits - 1 - zero[n])`` the largest weight row n can hold. The kernels work on
  codes as the contract says (``sum x c - zero sum x``, with signed bit planes), so their rounding
  error scales with the row's code range, not with the weights actually drawn: a weight
  ``scale * (c - zero)`` near 0 because ``zero`` is near a code is the difference of two terms of
  size ``range``. Every activation is 1-Lipschitz (leaky slope <= 1), so the bound holds after
  it. ``gemm_t`` likewise with ``bound[m, k] = sum_n |g[m, n]| * range[n]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

_cpu = pytest.importorskip("qgen_infer._cpu", reason="CPU extension qgen_infer._cpu not built")

from qgen_infer.engine.backend import (  # noqa: E402
    ACTIVATIONS,
    Epilogue,
    MatrixWeight,
    gemm_reference,
    gemm_t_reference,
)
from qgen_infer.engine.cpu_backend import create_backend, is_available  # noqa: E402

ALL_ISAS = ("portable", "avx2", "avx512")
SUPPORTED = set(_cpu.supported_isas())
ISAS = [pytest.param(i, marks=pytest.mark.skipif(i not in SUPPORTED,
                                                 reason=f"this CPU/OS lacks {i}"))
        for i in ALL_ISAS]
BITS = (1, 2, 3, 4)
# (M, K, N): ones, primes, sizes off every block (16 columns, 32-entry words, 6- and 4-row
# tiles: M = 10 is 6 + 4 rows, 13 is 6 + 6 + 1).
SHAPES = [(1, 1, 1), (1, 784, 500), (3, 1, 17), (2, 33, 1), (7, 13, 997), (5, 97, 31),
          (64, 50, 40), (9, 300, 130), (10, 45, 33), (13, 70, 37)]
REL = 1e-5


def make_weight(bits: int, n: int, k: int, gen: torch.Generator,
                zero: str = "random") -> MatrixWeight:
    """Random codes with every value 0 .. 2^bits - 1 present (when n * k allows)."""
    top = 1 << bits
    codes = torch.randint(0, top, (n * k,), generator=gen, dtype=torch.uint8)
    cover = min(top, n * k)
    perm = torch.randperm(n * k, generator=gen)[:cover]
    codes[perm] = torch.arange(cover, dtype=torch.uint8)
    codes = codes.reshape(n, k)
    scale = torch.rand(n, generator=gen) + 0.05
    if zero == "random":
        z = torch.rand(n, generator=gen) * (top - 1)
    else:  # the LinearQuantize convention
        z = torch.full((n,), 0.5 if bits == 1 else float(top // 2))
    return MatrixWeight(codes, scale, z, bits)


def row_range(w: MatrixWeight) -> torch.Tensor:
    """``scale * max(zero, 2^bits - 1 - zero)``: the largest |weight| each row can represent."""
    top = float((1 << w.bits) - 1)
    return w.scale * torch.maximum(w.zero.abs(), (top - w.zero).abs())


def fwd_bound(x: torch.Tensor, w: MatrixWeight) -> torch.Tensor:
    return x.abs().sum(1, keepdim=True) * row_range(w)[None, :]


def bwd_bound(g: torch.Tensor, w: MatrixWeight) -> torch.Tensor:
    return (g.abs() @ row_range(w))[:, None].expand(g.shape[0], w.shape[1])


def check_close(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor,
                slack: torch.Tensor | float = 0.0) -> None:
    assert y.shape == ref.shape and y.dtype == torch.float32
    err = (y - ref).abs()
    bad = err > REL * bound + slack + 1e-30
    assert not bad.any(), (f"{int(bad.sum())} elements off; worst err {err.max().item():.3g}, "
                           f"bound there {(REL * bound)[bad].min().item():.3g}")


def norm_rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    return (y - ref).abs().max().item() / scale if scale > 0 else (y - ref).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def exact_kernels():
    """These tests hold the exact fp32-table kernels: the AVX2 tier's int8-table path
    (QGEN_CPU_INT_TABLES, tests/test_lut_i8.py) stays off here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QGEN_CPU_INT_TABLES", "off")
        yield


@pytest.fixture(scope="module")
def backends() -> dict[str, object]:
    return {i: create_backend(i) for i in ALL_ISAS if i in SUPPORTED}


def test_available() -> None:
    assert is_available()
    assert "portable" in SUPPORTED


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_and_gemm_t_match_reference(backends, isa: str, bits: int,
                                         shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    gen = torch.Generator().manual_seed(zlib.crc32(f"{isa}{bits}{shape}".encode()))
    w = make_weight(bits, n, k, gen)
    if n * k >= 1 << bits:
        assert torch.unique(w.codes).numel() == 1 << bits
    be = backends[isa]
    p = be.prepare(w)

    x = torch.randn(m, k, generator=gen)
    y, ref = be.gemm(x, p), gemm_reference(x, w)
    assert norm_rel(y, ref) < REL
    check_close(y, ref, fwd_bound(x, w))

    g = torch.randn(m, n, generator=gen)
    gt, ref_t = be.gemm_t(g, p), gemm_t_reference(g, w)
    assert gt.shape == (m, k)
    assert norm_rel(gt, ref_t) < REL
    check_close(gt, ref_t, bwd_bound(g, w))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "alpha_beta"])
def test_epilogue(backends, isa: str, bits: int, activation: str, affine: bool) -> None:
    m, k, n = 6, 70, 45
    gen = torch.Generator().manual_seed(1000 + bits)
    w = make_weight(bits, n, k, gen, zero="quantizer")
    x = torch.randn(m, k, generator=gen).relu()  # non-negative, as after a ReLU layer
    alpha = torch.randn(n, generator=gen) if affine else None
    beta = torch.randn(n, generator=gen) if affine else None
    ep = Epilogue(alpha, beta, activation, negative_slope=0.2)
    be = backends[isa]
    y, ref = be.gemm(x, be.prepare(w), ep), gemm_reference(x, w, ep)
    a = alpha.abs()[None, :] if affine else 1.0
    slack = 1e-6 * beta.abs()[None, :] if affine else 0.0
    check_close(y, ref, a * fwd_bound(x, w), slack)


@pytest.mark.parametrize("activation,torch_fn", [
    ("tanh", torch.tanh),
    ("leaky_relu", lambda v: torch.nn.functional.leaky_relu(v, 0.2)),
    ("relu", torch.relu),
])
def test_fused_activations_on_a_dense_grid(activation: str, torch_fn) -> None:
    # W = [[1]] (codes 1, scale 2, zero 1/2) makes the epilogue see x itself: the vectorised
    # tanh (series near 0, exp-based elsewhere) against torch over [-12, 12] and its edges.
    backend = create_backend()
    w = MatrixWeight(torch.ones(1, 1, dtype=torch.uint8), torch.full((1,), 2.0),
                     torch.full((1,), 0.5), 1)
    xs = torch.cat([torch.linspace(-12, 12, 100_001),
                    torch.tensor([0.0, 1e-30, -1e-30, 0.125, -0.125, 0.12499999, 44.0, -88.0])])
    y = backend.gemm(xs[:, None].contiguous(), backend.prepare(w),
                     Epilogue(activation=activation, negative_slope=0.2))[:, 0]
    ref = torch_fn(xs.double())
    err = (y.double() - ref).abs()
    # the GEMM's own fp32 rounding of x is relative to |x|; the activation adds a few ulps
    assert float((err / xs.double().abs().clamp_min(1.0)).max()) < 2e-7
    assert float((err / ref.abs().clamp_min(1e-30))[xs.abs() > 1e-6].max()) < 2e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_epilogues_are_bit_identical_across_tiers(backends, activation: str) -> None:
    # Each tier compiles csrc/epilogue.h for its own vector width; with W = [[1]] (one exact
    # product) whatever differs between tiers is the epilogue's arithmetic, which must not.
    w = MatrixWeight(torch.ones(1, 1, dtype=torch.uint8), torch.full((1,), 2.0),
                     torch.full((1,), 0.5), 1)
    xs = torch.cat([torch.linspace(-12, 12, 20_001), torch.tensor([0.0, -0.0, 0.125, -88.0])])
    x = xs[:, None].contiguous()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    ep = Epilogue(alpha=torch.full((1,), 1.5), beta=torch.full((1,), -0.25),
                  activation=activation, negative_slope=0.2)
    outs = {}
    for isa, be in backends.items():
        p = be.prepare(w)
        y = be.gemm(x, p, ep)
        outs[isa] = (y, be.gemm_t_through_epilogue(g, y, p, ep))
    y0, h0 = outs.pop("portable")
    for isa, (y, h) in outs.items():
        assert torch.equal(y, y0), isa
        assert torch.equal(h, h0), isa


def test_epilogue_none_equals_default() -> None:
    gen = torch.Generator().manual_seed(5)
    w = make_weight(3, 20, 40, gen)
    x = torch.randn(4, 40, generator=gen)
    be = create_backend()
    p = be.prepare(w)
    assert torch.equal(be.gemm(x, p), be.gemm(x, p, Epilogue()))


# ---------------------------------------------------------------------------------------------
# Sparse inputs (the s-sparse latent into G's first layer) take the sparse-row driver
# ---------------------------------------------------------------------------------------------
SPARSE_SHAPES = [(1, 784, 500), (256, 784, 500), (7, 130, 997), (5, 97, 31), (9, 300, 130),
                 (13, 70, 37), (40, 1000, 1000)]


def sparse_rows(m: int, k: int, gen: torch.Generator, density: float = 1 / 8) -> torch.Tensor:
    """Rows with round(density * k) nonzeros on random supports, as P_s leaves the latent; row 1
    (when there is one) entirely zero."""
    keep = max(1, round(density * k))
    support = torch.rand(m, k, generator=gen).argsort(dim=1)[:, :keep]
    x = torch.zeros(m, k).scatter(1, support, torch.randn(m, keep, generator=gen))
    if m > 1:
        x[1] = 0.0
    return x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SPARSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sparse_inputs_match_reference(backends, isa: str, bits: int,
                                       shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    gen = torch.Generator().manual_seed(zlib.crc32(f"sparse{isa}{bits}{shape}".encode()))
    w = make_weight(bits, n, k, gen)
    x = sparse_rows(m, k, gen)
    alpha, beta = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    ep = Epilogue(alpha, beta, "leaky_relu", negative_slope=0.2)
    be = backends[isa]
    y, ref = be.gemm(x, be.prepare(w), ep), gemm_reference(x, w, ep)
    check_close(y, ref, alpha.abs()[None, :] * fwd_bound(x, w), 1e-6 * beta.abs()[None, :])


@pytest.mark.parametrize("bits", BITS)
def test_sparse_path_is_bit_identical_across_tiers_and_threads(backends, bits: int) -> None:
    # The portable tier is the sparse kernels' reference (same terms, same order); the LUT
    # tiles of different tiers accumulate in different orders, so equality also shows that
    # both tiers took the sparse path. Threads split rows only: results cannot change.
    gen = torch.Generator().manual_seed(40 + bits)
    w = make_weight(bits, 500, 784, gen)
    x = sparse_rows(256, 784, gen)
    ep = Epilogue(torch.rand(500, generator=gen), None, "tanh")
    ref = backends["portable"]
    y0 = ref.gemm(x, ref.prepare(w), ep)
    for isa in set(backends) - {"portable"}:
        be = backends[isa]
        assert torch.equal(be.gemm(x, be.prepare(w), ep), y0), isa
    two = create_backend("portable", threads=2)
    assert torch.equal(two.gemm(x, two.prepare(w), ep), y0)


def test_sparse_rows_edge_cases(backends) -> None:
    gen = torch.Generator().manual_seed(44)
    w = make_weight(2, 37, 300, gen)
    for isa, be in backends.items():
        p = be.prepare(w)
        zero = torch.zeros(5, 300)
        assert torch.equal(be.gemm(zero, p), gemm_reference(zero, w))  # all rows empty: 0
        one = torch.zeros(3, 300)
        one[0, 299], one[2, 0] = 2.5, -1.0  # last and first reduction entry, lone nonzeros
        check_close(be.gemm(one, p), gemm_reference(one, w), fwd_bound(one, w))
        nan = sparse_rows(4, 300, gen)
        nan[2, int(nan[2].nonzero()[0])] = float("nan")
        y = be.gemm(nan, p)
        assert y[2].isnan().all() and not y[[0, 1, 3]].isnan().any(), isa


# (M, K, N): big enough to run on 2 threads (the driver keeps < ~0.15 ms of work on one), by
# rows (M >= 32: panels of rows per item) and by columns (small M: column groups per item).
@pytest.fixture(params=["own", "openmp"])
def thread_pool(request):
    """Run the test's multi-threaded products on the extension's own workers, then on OpenMP
    teams (the two ways csrc/thread_pool.h runs items), restoring the process's choice."""
    before = _cpu.uses_openmp()
    if request.param == "openmp" and not _cpu.set_use_openmp(True):
        pytest.skip("extension built without OpenMP")
    _cpu.set_use_openmp(request.param == "openmp")
    yield request.param
    _cpu.set_use_openmp(before)


@pytest.mark.parametrize("shape", [(40, 1000, 1000), (8, 4100, 1030)], ids=["by_rows", "by_cols"])
def test_threads_do_not_change_results(shape: tuple[int, int, int], thread_pool: str) -> None:
    m, k, n = shape
    gen = torch.Generator().manual_seed(6)
    w = make_weight(1, n, k, gen)
    x = torch.randn(m, k, generator=gen)
    one, two = create_backend(threads=1), create_backend(threads=2)
    p = one.prepare(w)
    y1 = one.gemm(x, p)
    assert torch.equal(y1, two.gemm(x, p))
    check_close(y1, gemm_reference(x, w), fwd_bound(x, w))
    g = torch.randn(m, n, generator=gen)
    assert torch.equal(one.gemm_t(g, p), two.gemm_t(g, p))
    sparse = sparse_rows(m, k, gen)
    assert torch.equal(one.gemm(sparse, p), two.gemm(sparse, p))


FORKED_CHILD = """
import os, torch
from qgen_infer import _cpu
from qgen_infer.engine.backend import MatrixWeight
from qgen_infer.engine.cpu_backend import create_backend
be = create_backend(threads=2)
_cpu.set_use_openmp(True)  # the parent runs OpenMP teams
w = MatrixWeight(torch.randint(0, 2, (1000, 1000), dtype=torch.uint8), torch.rand(1000) + 0.1,
                 torch.full((1000,), 0.5), 1)
p, x = be.prepare(w), torch.randn(64, 1000)  # enough work for two threads
y = be.gemm(x, p)
torch.randn(500, 500) @ torch.randn(500, 500)  # torch's team too, as in a solver step
pid = os.fork()
if pid == 0:  # a team would never start here: the kernels must run on the caller
    # (compared in numpy: torch's own multi-threaded operators hang in a forked child)
    # and a model loads there: repack_planes once ran an OpenMP loop, which never started
    same = (be.gemm(x, p).numpy() == y.numpy()).all()
    q = be.prepare(w)
    same = same and (q.words == p.words).all() and (q.words_t == p.words_t).all()
    os._exit(0 if same else 3)
print("child", os.waitpid(pid, 0)[1])
"""


def test_forked_child_runs_kernels_and_loads_after_openmp_in_the_parent() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "child 0"


def test_thread_pool_choice() -> None:
    from qgen_infer.engine import cpu_backend

    before = torch.get_num_threads()
    shared = cpu_backend.shares_openmp_with_torch(_cpu)
    assert isinstance(shared, bool) and torch.get_num_threads() == before  # probe restored
    assert create_backend().thread_pool in ("own", "openmp")


def test_kernel_threads_follow_torch_unless_fixed() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert create_backend()._threads() == 3  # qgen-reconstruct --threads governs both
        assert create_backend(threads=2)._threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bits", [1, 4])
def test_several_table_panels(bits: int) -> None:
    """K large enough that the 1 MiB table budget splits M into several panels."""
    gen = torch.Generator().manual_seed(7)
    m, k, n = 37, 4100, 20
    w = make_weight(bits, n, k, gen)
    x = torch.randn(m, k, generator=gen)
    be = create_backend()
    y, ref = be.gemm(x, be.prepare(w)), gemm_reference(x, w)
    check_close(y, ref, fwd_bound(x, w))


@pytest.mark.parametrize("isa", ISAS)
def test_tiers_agree_closely(backends, isa: str) -> None:
    """Tables are built with identical arithmetic; only accumulation order differs."""
    gen = torch.Generator().manual_seed(8)
    w = make_weight(4, 61, 129, gen)
    x = torch.randn(5, 129, generator=gen)
    y = backends[isa].gemm(x, backends[isa].prepare(w))
    y0 = backends["portable"].gemm(x, backends["portable"].prepare(w))
    assert norm_rel(y, y0) < 1e-6


# ---------------------------------------------------------------------------------------------
# ISA selection and input checks
# ---------------------------------------------------------------------------------------------


def test_isa_env_read_once_per_process() -> None:
    """``QGEN_CPU_ISA`` picks the tier of every call without an ``isa`` argument (the argument
    still wins); an invalid value raises at every call; the first valid value read stays for the
    process (a fresh interpreter: this one's extension has read the variable already)."""
    code = """
import os
from qgen_infer import _cpu
from qgen_infer.engine.cpu_backend import create_backend
for _ in range(2):
    try:
        create_backend()
    except ValueError as e:
        assert "QGEN_CPU_ISA" in str(e) and "sse9" in str(e), e
    else:
        raise SystemExit("an invalid QGEN_CPU_ISA was accepted")
assert _cpu.resolve_isa("portable") == "portable"
os.environ["QGEN_CPU_ISA"] = "portable"
assert create_backend().isa == "portable"
assert _cpu.kernel_name(2) == "gemm_w2_planes_f32[portable]"
assert create_backend(_cpu.best_isa()).isa == _cpu.best_isa()
os.environ["QGEN_CPU_ISA"] = "sse9"
assert _cpu.resolve_isa("") == "portable" and create_backend().isa == "portable"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "QGEN_CPU_ISA": "sse9"}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_unknown_or_unsupported_isa() -> None:
    with pytest.raises(ValueError, match="unknown instruction set"):
        create_backend("neon")
    for isa in set(ALL_ISAS) - SUPPORTED:
        with pytest.raises(ValueError, match="does not support"):
            create_backend(isa)


@pytest.fixture(scope="module")
def prepared():
    gen = torch.Generator().manual_seed(9)
    w = make_weight(2, 8, 12, gen)
    be = create_backend()
    return be, be.prepare(w)


def test_rejects_bad_x(prepared) -> None:
    be, p = prepared
    with pytest.raises(TypeError, match="float32"):
        be.gemm(torch.randn(2, 12, dtype=torch.float64), p)
    with pytest.raises(ValueError, match="contiguous"):
        be.gemm(torch.randn(12, 2).T, p)
    with pytest.raises(ValueError, match="12 columns"):
        be.gemm(torch.randn(2, 11), p)
    with pytest.raises(ValueError, match="2-D"):
        be.gemm(torch.randn(12), p)
    with pytest.raises(TypeError):
        be.gemm(np.zeros((2, 12), np.float32), p)


def test_rejects_bad_g_and_epilogue(prepared) -> None:
    be, p = prepared
    with pytest.raises(ValueError, match="8 columns"):
        be.gemm_t(torch.randn(3, 12), p)
    with pytest.raises(TypeError, match="float32"):
        be.gemm_t(torch.randn(3, 8).half(), p)
    with pytest.raises(ValueError, match="alpha"):
        be.gemm(torch.randn(2, 12), p, Epilogue(alpha=torch.ones(7)))


def test_extension_checks_its_own_inputs(prepared) -> None:
    """Called directly, the C++ entry points raise rather than crash."""
    _, p = prepared
    x = np.zeros((2, 12), np.float32)
    with pytest.raises(ValueError, match="words"):
        _cpu.gemm_planes_f32(x, p.words[:-1].copy(), 8, 2, p.scale, p.zero)
    with pytest.raises(TypeError, match="words"):
        _cpu.gemm_planes_f32(x, p.words.astype(np.int64), 8, 2, p.scale, p.zero)
    with pytest.raises(ValueError, match="scale"):
        _cpu.gemm_planes_f32(x, p.words, 8, 2, p.scale[:4].copy(), p.zero)
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.gemm_planes_f32(np.zeros((12, 2), np.float32).T, p.words, 8, 2, p.scale, p.zero)
    with pytest.raises(ValueError, match="bits"):
        _cpu.gemm_planes_f32(x, p.words, 8, 5, p.scale, p.zero)
    with pytest.raises(ValueError, match="activation"):
        _cpu.gemm_planes_f32(x, p.words, 8, 2, p.scale, p.zero, None, None, 9)
    with pytest.raises(ValueError, match="words_t"):
        _cpu.gemm_t_planes_f32(np.zeros((2, 8), np.float32), p.words_t[:5].copy(), 12, 2,
                               p.scale, p.zero)


def test_repack_rejects_out_of_range_codes() -> None:
    codes = np.full((3, 5), 4, np.uint8)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        _cpu.repack_planes(codes, 2)


def test_kernel_names_carry_the_contract() -> None:
    be = create_backend("portable")
    assert be.kernel_name(3) == "gemm_w3_planes_f32[portable]"
    assert be.kernel_name(1, transposed=True) == "gemm_t_w1_planes_f32[portable]"


def test_empty_batch(prepared) -> None:
    be, p = prepared
    assert be.gemm(torch.zeros(0, 12), p).shape == (0, 8)
    assert be.gemm_t(torch.zeros(0, 8), p).shape == (0, 12)


@pytest.mark.parametrize("isa", ISAS)
def test_empty_reduction(backends, isa: str) -> None:
    """K = 0 (and N = 0 reductions in gemm_t): the products are zeros, then the epilogue."""
    w = MatrixWeight(torch.zeros(5, 0, dtype=torch.uint8), torch.ones(5), torch.zeros(5), 2)
    be = backends[isa]
    p = be.prepare(w)
    beta = torch.arange(5, dtype=torch.float32)
    y = be.gemm(torch.zeros(4, 0), p, Epilogue(beta=beta))
    assert torch.equal(y, beta.expand(4, 5))
    assert be.gemm_t(torch.randn(4, 5), p).shape == (4, 0)


@pytest.mark.parametrize("bits", BITS)
def test_gemm_t_is_the_input_gradient(bits: int) -> None:
    """gemm_t equals autograd's input gradient of the reference forward (before its epilogue)."""
    gen = torch.Generator().manual_seed(20 + bits)
    w = make_weight(bits, 37, 53, gen)
    x = torch.randn(6, 53, generator=gen, requires_grad=True)
    g = torch.randn(6, 37, generator=gen)
    gemm_reference(x, w).backward(g)
    be = create_backend()
    gt = be.gemm_t(g, be.prepare(w))
    check_close(gt, x.grad, bwd_bound(g, w))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 29, 45), (6, 70, 45), (40, 33, 17)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_t_through_epilogue_is_the_input_gradient(isa: str, bits: int, activation: str,
                                                       shape: tuple[int, int, int],
                                                       threads: int) -> None:
    """The fused backward equals autograd's input gradient of the reference forward WITH its
    epilogue (both thread modes: M = 40 splits rows, small M splits columns)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(zlib.crc32(f"t{isa}{bits}{activation}{shape}".encode()))
    w = make_weight(bits, n, k, gen, zero="quantizer")
    ep = Epilogue(torch.randn(n, generator=gen), torch.randn(n, generator=gen), activation, 0.2)
    x = torch.randn(m, k, generator=gen, requires_grad=True)
    y = gemm_reference(x, w, ep)
    g = torch.randn(m, n, generator=gen)
    y.backward(g)
    be = create_backend(isa, threads=threads)
    p = be.prepare(w)
    y_kernel = be.gemm(x.detach(), p, ep)
    got = be.gemm_t_through_epilogue(g, y_kernel, p, ep)
    assert got.shape == (m, k)
    # the kernel's own y: act' may differ from the reference's only where y sits at a kink
    scaled = g * ep.alpha.abs()
    check_close(got, x.grad, bwd_bound(scaled, w))


def test_gemm_t_through_epilogue_rejects_bad_y(prepared) -> None:
    be, p = prepared
    ep = Epilogue(alpha=torch.ones(8), activation="tanh")
    with pytest.raises(ValueError, match="8 columns"):
        be.gemm_t_through_epilogue(torch.randn(3, 8), torch.randn(3, 7), p, ep)
    with pytest.raises(ValueError, match="shape of grad_y"):
        be.gemm_t_through_epilogue(torch.randn(3, 8), torch.randn(4, 8), p, ep)
    with pytest.raises(ValueError, match="forward output y"):
        _cpu.gemm_t_planes_f32(np.zeros((3, 8), np.float32), p.words_t, 12, 2, p.scale, p.zero,
                               "", 0, None, None, 3)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a test extra; the rest of the file runs without it
    given = None

if given is not None:

    @settings(max_examples=40, deadline=None)
    @given(m=st.integers(1, 9), k=st.integers(1, 150), n=st.integers(1, 70),
           bits=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
    def test_random_shapes_best_isa(m: int, k: int, n: int, bits: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        w = make_weight(bits, n, k, gen)
        be = create_backend()
        p = be.prepare(w)
        x, g = torch.randn(m, k, generator=gen), torch.randn(m, n, generator=gen)
        check_close(be.gemm(x, p), gemm_reference(x, w), fwd_bound(x, w))
        check_close(be.gemm_t(g, p), gemm_t_reference(g, w), bwd_bound(g, w))


def test_concurrent_callers_share_the_pool() -> None:
    """Several Python threads calling at once (the GIL is released) get their own results."""
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(11)
    w = make_weight(2, 1030, 4100, gen)
    be = create_backend(threads=2)
    p = be.prepare(w)
    xs = [torch.randn(8, 4100, generator=gen) for _ in range(4)]
    expected = [create_backend(threads=1).gemm(x, p) for x in xs]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda x: be.gemm(x, p), xs * 3))
    for i, y in enumerate(got):
        assert torch.equal(y, expected[i % 4])


# --- the autograd-free MLP solver step (engine/cpu_mlp_step.py) -------------------------------

MNIST_1BIT = os.path.join(os.path.dirname(__file__), "..", "models", "mnist-m25-1bit.qgen")


@pytest.mark.skipif(not os.path.exists(MNIST_1BIT), reason="shipped MNIST model not found")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dispatch", ["cpu", "auto"])
@pytest.mark.parametrize("batch", [1, 37])
def test_cpu_mlp_solver_equals_the_autograd_solver_bit_for_bit(monkeypatch, isa: str,
                                                               dispatch: str,
                                                               batch: int) -> None:
    """CpuMlpSolver runs autograd's operations in its order: z, x and loss equal the eager
    proximal_gradient_descent's exactly, on every tier, on the packed and the dispatching
    backend, for batch 1 and an odd batch; reconstruct() takes it on the cpu backend, fp32 and
    (sensing net in) bf16, with results equal to the eager solver's."""
    import qgen_infer
    from qgen_infer import reconstruction
    from qgen_infer.engine.cpu_mlp_step import CpuMlpSolver
    from qgen_infer.solve import sample_latent
    from qgen_infer.solve.proximal import proximal_gradient_descent

    monkeypatch.setenv("QGEN_CPU_ISA", isa)
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", "")
    model = qgen_infer.load(MNIST_1BIT, backend=dispatch)
    assert CpuMlpSolver.supports(model)
    sv = model.solver
    gen = torch.Generator().manual_seed(batch)
    z0 = sample_latent(batch, 784, sv["sparsity"], project=True, generator=gen)
    y = torch.randn(batch, model.config["measurements"], generator=gen)
    kw = dict(step_size=sv["step_size"], sparsity=sv["sparsity"], project=sv["project"])
    want = proximal_gradient_descent(y, model.generator, model.sensing, z0, steps=3, **kw)
    got = CpuMlpSolver(model, **kw).run(y, z0, 3)
    for name in ("z", "x", "loss"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    ys = y.numpy()
    # and through reconstruct(), with the sensing net in bf16 too where the CPU has bf16 hardware
    precisions = ["fp32"] + (["bf16"] if reconstruction.cpu_has_bf16_matmul() else [])
    fast = [qgen_infer.reconstruct(model, ys, batch_size=batch, restarts=2, precision=p)
            for p in precisions]
    monkeypatch.setattr(reconstruction, "_cpu_mlp_supported", lambda m: False)
    for p, got_p in zip(precisions, fast, strict=True):
        eager = qgen_infer.reconstruct(model, ys, batch_size=batch, restarts=2, precision=p)
        for name in ("x_hat", "z", "loss"):
            np.testing.assert_array_equal(getattr(got_p, name), getattr(eager, name),
                                          err_msg=f"{p} {name}")


def test_cpu_mlp_solver_declines_what_it_does_not_run() -> None:
    """The reference backend or another sensing net keep the autograd solver (and building one
    for them is an error)."""
    from torch import nn

    import qgen_infer
    from qgen_infer.engine.cpu_mlp_step import CpuMlpSolver

    if not os.path.exists(MNIST_1BIT):
        pytest.skip("shipped MNIST model not found")
    ref = qgen_infer.load(MNIST_1BIT, backend="reference")
    assert not CpuMlpSolver.supports(ref)
    cpu = qgen_infer.load(MNIST_1BIT, backend="cpu")
    cpu.sensing = nn.Sequential(nn.Flatten(), nn.Linear(784, 25), nn.Tanh())
    assert not CpuMlpSolver.supports(cpu)
    with pytest.raises(ValueError, match="MLP"):
        CpuMlpSolver(cpu, step_size=0.01, sparsity=None, project=False)
