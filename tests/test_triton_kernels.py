"""The Triton packed kernels against the torch references.

Without CUDA every kernel runs on the CPU under ``TRITON_INTERPRET=1`` (set below, before any
kernel module is imported: Triton picks compiled vs interpreted at decoration time) on small,
awkward shapes. With CUDA the same tests run on the GPU, and the ``gpu``-marked ones add full-size
shapes, 16-bit activations, autotuning and CUDA-graph capture.

Tolerance: a kernel's error is held to ``rtol * bound`` per element, where ``bound[m, n] =
Σ_k |a[m, k]| |W[n, k]|`` (times |alpha|, plus |beta|) is the size of the terms summed: the
standard error bound of a dot product, which does not blow up where the sum cancels. fp32:
rtol 1e-5. On a GPU, fp16 output rounding is 2^-11 and bf16 2^-8 relative; TF32 rounds the
activations to 10 mantissa bits.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
# Tests launch on heuristic configs; test_autotune_writes_cache turns tuning back on.
os.environ.setdefault("QGEN_TRITON_AUTOTUNE", "0")

pytest.importorskip("triton")

from qgen_infer.engine.backend import (  # noqa: E402
    ACTIVATIONS,
    Epilogue,
    MatrixWeight,
    ReferenceBackend,
    gemm_reference,
    gemm_t_reference,
)
from qgen_infer.engine.triton_backend import create_backend, is_available  # noqa: E402
from qgen_infer.kernels import configs  # noqa: E402
from qgen_infer.kernels.configs import KernelConfig  # noqa: E402
from qgen_infer.kernels.gemm import gemm  # noqa: E402
from qgen_infer.kernels.gemm_t import gemm_t  # noqa: E402
from qgen_infer.kernels.layout import (  # noqa: E402
    PackedKWords,
    dequantize_kwords,
    kpack_rows,
    pack_kwords,
    unpack_kwords,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# (M, K, N): ones, primes, sizes off every block multiple
SHAPES = [(1, 1, 1), (1, 37, 13), (7, 13, 37), (20, 70, 33)]
# per path: one config with whole blocks, one with small blocks and a 3-way split of the
# reduction, and the word decode (whole words per tile) with and without a split
PATH_CONFIGS = {
    "dot": [KernelConfig("dot", 16, 32, 32), KernelConfig("dot", 16, 16, 16, split=3),
            KernelConfig("dot", 16, 32, 64, word_decode=True),
            KernelConfig("dot", 16, 32, 32, split=3, word_decode=True),
            KernelConfig("dot", 32, 32, 64, split=2, word_decode=True)],  # a wave-filling tile
    "gemv": [KernelConfig("gemv", 1, 32, 32), KernelConfig("gemv", 1, 16, 16, split=3),
             KernelConfig("gemv", 1, 32, 32, split=2, word_decode=True)],
}


# each product on each launch path, swept over PATH_CONFIGS below (the registry of every kernel,
# qgen_infer/engine/kernel_registry.py, runs one config per path in test_kernel_registry.py)
LAUNCHES = [(op, path) for op in ("gemm", "gemm_t") for path in ("dot", "gemv")]


def launch(op: str, a: torch.Tensor, w: PackedKWords, cfg: KernelConfig) -> torch.Tensor:
    """``op``'s product of ``a`` and ``w`` on the launch config ``cfg``, without an epilogue."""
    return gemm(a, w, config=cfg) if op == "gemm" else gemm_t(a, w, config=cfg)


def launch_reference(op: str, a: torch.Tensor, w: PackedKWords) -> torch.Tensor:
    """The same product in fp64 on the CPU from the decoded weight."""
    wd = dequantize_kwords(w)
    a64 = a.detach().cpu().double()
    return a64 @ wd.t() if op == "gemm" else a64 @ wd


def make_weight(n: int, k: int, bits: int, seed: int = 0) -> MatrixWeight:
    """Codes drawing every value 0 .. 2**bits - 1 (when n*k allows), fractional zeros."""
    gen = torch.Generator().manual_seed(seed)
    codes = (torch.randperm(n * k, generator=gen) % 2**bits).to(torch.uint8).reshape(n, k)
    scale = torch.rand(n, generator=gen) * 0.5 + 0.05
    zero = torch.rand(n, generator=gen) * (2**bits - 1)
    return MatrixWeight(codes, scale, zero, bits)


def term_bound(a: torch.Tensor, w_dense: torch.Tensor, transposed: bool) -> torch.Tensor:
    a64 = a.detach().cpu().double().abs()
    w64 = w_dense.double().abs()
    return a64 @ (w64 if transposed else w64.t())


def assert_close(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, rtol: float,
                 atol: float = 0.0) -> None:
    err = (y.detach().cpu().double() - ref.detach().cpu().double()).abs()
    allowed = rtol * bound + atol + 1e-30
    worst = (err / allowed).max().item() if err.numel() else 0.0
    assert worst <= 1.0, (f"error {err.max().item():.3e} exceeds rtol={rtol} x bound "
                          f"(worst ratio {worst:.2f})")


# --- layout ------

@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 7, 16, 31, 32, 33, 37, 65])
def test_pack_roundtrip_every_code(bits: int, k: int) -> None:
    w = make_weight(19, k, bits)
    words = pack_kwords(w.codes, bits)
    assert words.dtype == torch.int32 and words.shape == (kpack_rows(k, bits), 19)
    assert torch.equal(unpack_kwords(words, k, bits), w.codes)


def test_pack_layout_is_documented_bit_order() -> None:
    codes = torch.tensor([[1, 0, 3, 2, 1]], dtype=torch.uint8)  # 2-bit, LSB first
    assert pack_kwords(codes, 2).tolist() == [[1 | 0 << 2 | 3 << 4 | 2 << 6 | 1 << 8]]
    top = torch.full((1, 32), 1, dtype=torch.uint8)  # bit 31 set: a negative int32
    assert pack_kwords(top, 1).item() == -1
    c3 = torch.tensor([[5, 7, 2]], dtype=torch.uint8)  # 3-bit: 2-bit plane of lows, then highs
    assert pack_kwords(c3, 3).tolist() == [[1 | 3 << 2 | 2 << 4], [1 | 1 << 1]]


@pytest.mark.parametrize("n", [1, 13, 16, 500])
def test_packed_rows_are_padded_to_16_words(n: int) -> None:
    """``from_codes`` pads each row of words to a multiple of 16 (aligned, vectorisable loads);
    the view still decodes to the codes, and a kernel given a packed weight whose words are
    not unit-stride along N refuses it instead of reading the wrong codes."""
    w = make_weight(n, 70, 3)
    p = PackedKWords.from_codes(w.codes, w.scale, w.zero, 3, DEVICE)
    assert p.words.shape == (kpack_rows(70, 3), n)
    assert p.words.stride() == (-(-n // 16) * 16, 1)
    assert torch.equal(unpack_kwords(p.words.cpu(), 70, 3), w.codes)
    bad = PackedKWords(p.words.t().contiguous().t(), p.scale, p.zero, 3, 70)
    if n > 1:
        with pytest.raises(ValueError, match="unit column stride"):
            launch("gemm", torch.ones(2, 70, device=DEVICE), bad, PATH_CONFIGS["dot"][0])


def test_pack_rejects_bad_codes() -> None:
    with pytest.raises(ValueError, match="< 2\\*\\*bits"):
        pack_kwords(torch.full((2, 3), 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="bits"):
        pack_kwords(torch.zeros((2, 3), dtype=torch.uint8), 5)


# --- every kernel path against its reference ------

@pytest.mark.parametrize(("op", "path"), LAUNCHES, ids=lambda v: v)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(op: str, path: str, bits: int,
                                  shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    if path == "gemv" and m > 8:
        m = 3  # the GEMV path is for tiny M (one program per row: slow under the interpreter)
    w = make_weight(n, k, bits, seed=bits * 100 + m + k + n)
    packed = PackedKWords.from_codes(w.codes, w.scale, w.zero, bits, DEVICE)
    a = torch.randn(m, k if op == "gemm" else n, generator=torch.Generator().manual_seed(1))
    ref = launch_reference(op, a, packed)
    bound = term_bound(a, dequantize_kwords(packed), transposed=op == "gemm_t")
    for cfg in PATH_CONFIGS[path]:
        y = launch(op, a.to(DEVICE), packed, cfg)
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert_close(y, ref, bound, rtol=1e-5)


@pytest.mark.parametrize("path", ["dot", "gemv"])
@pytest.mark.parametrize("activation", ["none", "relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("shape", [(1, 37, 13), (7, 13, 37), (20, 70, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_t_through_epilogue(path: str, activation: str, shape: tuple[int, int, int]) -> None:
    """``gemm_t(g, y=, alpha=, activation=)`` = ``(g ⊙ act'(y) ⊙ alpha) W`` in fp64, with and
    without alpha, split and word-decoding configs of the path; y has exact zeros (the relu
    kink: act'(0) = 0, i.e. y > 0 is the test) and strides of a transposed view."""

    m, k, n = shape
    if path == "gemv":
        m = min(m, 3)
    gen = torch.Generator().manual_seed(m + k + n)
    g = torch.randn(m, n, generator=gen)
    y = torch.randn(n, m, generator=gen).t()  # non-contiguous
    y = torch.tanh(y) if activation == "tanh" else torch.where(y.abs() < 0.3, 0.0, y)
    alpha = torch.rand(n, generator=gen) + 0.5
    slope = 0.2
    d = {"none": torch.ones_like(y), "relu": (y > 0).double(),
         "leaky_relu": torch.where(y > 0, 1.0, slope).double(),
         "tanh": 1 - y.double() ** 2}[activation]
    first = 1 + (len(activation) + m) % 4  # the parametrization cycles through every width
    for bits, use_alpha in [(first, False), (1 + first % 4, True)]:
        w = make_weight(n, k, bits, seed=bits + m)
        packed = PackedKWords.from_codes(w.codes, w.scale, w.zero, bits, DEVICE)
        wd = dequantize_kwords(packed)
        gd = g.double() * d * (alpha.double() if use_alpha else 1.0)
        for cfg in (PATH_CONFIGS[path][1], PATH_CONFIGS[path][-1]):  # split; word decode
            out = gemm_t(g.to(DEVICE), packed, cfg, y=y.to(DEVICE),
                         alpha=alpha.to(DEVICE) if use_alpha else None,
                         activation=activation, negative_slope=slope)
            assert_close(out, gd @ wd, gd.abs() @ wd.abs(), rtol=1e-5)


def test_gemm_t_through_epilogue_rejects_bad_input() -> None:
    w = make_weight(13, 37, 2)
    packed = PackedKWords.from_codes(w.codes, w.scale, w.zero, 2, DEVICE)
    g = torch.randn(4, 13, device=DEVICE)
    with pytest.raises(ValueError, match="needs y"):
        gemm_t(g, packed, activation="tanh")
    with pytest.raises(ValueError, match="shape"):
        gemm_t(g, packed, y=torch.randn(5, 13, device=DEVICE), activation="relu")
    with pytest.raises(ValueError, match="alpha"):
        gemm_t(g, packed, alpha=torch.ones(12, device=DEVICE))
    with pytest.raises(ValueError, match="activation"):
        gemm_t(g, packed, y=g, activation="gelu")


def test_strided_activations() -> None:
    w = make_weight(13, 37, 3)
    packed = PackedKWords.from_codes(w.codes, w.scale, w.zero, 3, DEVICE)
    x = torch.randn(37, 5, device=DEVICE).t()  # non-contiguous [5, 37]
    b = create_backend(DEVICE)
    ref = gemm_reference(x.cpu(), w)
    assert_close(b.gemm(x, packed), ref, term_bound(x, w.dequantize(), False), 1e-5)
    g = torch.randn(13, 5, device=DEVICE).t()
    ref_t = gemm_t_reference(g.cpu(), w)
    assert_close(b.gemm_t(g, packed), ref_t, term_bound(g, w.dequantize(), True), 1e-5)


# --- the backend: epilogues, both paths through the default configs ------

EPILOGUES = [(a, ha, hb) for a in ACTIVATIONS for ha, hb in
             [(False, False), (True, False), (False, True), (True, True)]]


@pytest.mark.parametrize("m", [1, 5])  # GEMV and tensor-core paths of the default selection
@pytest.mark.parametrize("activation,has_alpha,has_beta", EPILOGUES)
def test_backend_gemm_epilogue(m: int, activation: str, has_alpha: bool, has_beta: bool) -> None:
    bits = 1 + (len(activation) + has_alpha + 2 * has_beta + m) % 4  # cycle the widths
    n, k = 13, 37
    w = make_weight(n, k, bits)
    gen = torch.Generator().manual_seed(7)
    alpha = torch.randn(n, generator=gen) if has_alpha else None
    beta = torch.randn(n, generator=gen) if has_beta else None
    ep = Epilogue(alpha, beta, activation, negative_slope=0.2)
    x = torch.randn(m, k, generator=gen)
    b = create_backend(DEVICE)
    y = b.gemm(x.to(DEVICE), b.prepare(w), ep)
    ref = gemm_reference(x, w, ep)
    bound = term_bound(x, w.dequantize(), False)
    if alpha is not None:
        bound = bound * alpha.abs()
    if beta is not None:
        bound = bound + beta.abs()
    # every activation is 1-Lipschitz; tanh's exp form adds a few ulp of 1 (atol)
    assert_close(y, ref, bound, rtol=1e-5, atol=1e-6 if activation == "tanh" else 0.0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_backend_gemm_t(bits: int) -> None:
    w = make_weight(37, 13, bits)
    g = torch.randn(6, 37, generator=torch.Generator().manual_seed(3))
    b = create_backend(DEVICE)
    y = b.gemm_t(g.to(DEVICE), b.prepare(w))
    assert_close(y, gemm_t_reference(g, w), term_bound(g, w.dequantize(), True), 1e-5)


def test_backend_contract() -> None:
    assert is_available()
    b = create_backend(DEVICE)
    assert b.name == "triton"
    prepared = b.prepare(make_weight(5, 9, 2))
    with pytest.raises(ValueError, match="columns"):
        b.gemm(torch.randn(2, 8, device=DEVICE), prepared)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        b.gemm(torch.ones(2, 9, dtype=torch.float64, device=DEVICE), prepared)
    with pytest.raises(ValueError, match="columns"):
        b.gemm_t(torch.randn(2, 4, device=DEVICE), prepared)
    assert b.gemm(torch.randn(0, 9, device=DEVICE), prepared).shape == (0, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize(("op", "path"), LAUNCHES, ids=lambda v: v)
def test_half_activations(op: str, path: str, dtype: torch.dtype) -> None:
    m, k, n = (5, 37, 13)
    w = make_weight(n, k, 3)
    packed = PackedKWords.from_codes(w.codes, w.scale, w.zero, 3, DEVICE)
    a = torch.randn(m, k if op == "gemm" else n).to(dtype)  # exact in dtype
    ref = launch_reference(op, a, packed)
    y = launch(op, a.to(DEVICE), packed, PATH_CONFIGS[path][1])
    assert y.dtype == dtype
    unit = 2.0**-11 if dtype == torch.float16 else 2.0**-8  # output rounding
    # output rounding is relative to |y| <= bound; gemm_t also rounds g*scale to dtype
    assert_close(y, ref, term_bound(a, dequantize_kwords(packed), op == "gemm_t"), 2 * unit)


# --- custom ops: fake kernels, opcheck, autograd ------

def _op_args(bits: int = 2):
    w = make_weight(13, 37, bits)
    p = PackedKWords.from_codes(w.codes, w.scale, w.zero, bits, DEVICE)
    return w, p


def test_fake_kernels_give_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    import qgen_infer.kernels.ops  # noqa: F401

    _, p = _op_args()
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(4, 37, dtype=torch.float16, device=DEVICE))
        g = mode.from_tensor(torch.randn(4, 13, device=DEVICE))
        words, scale, zero = (mode.from_tensor(t) for t in (p.words, p.scale, p.zero))
        y = torch.ops.qgen_infer.packed_gemm(x, words, scale, zero, None, None, 2, 37, "relu",
                                             0.0)
        gt = torch.ops.qgen_infer.packed_gemm_t(g, words, scale, zero, 2, 37)
    assert y.shape == (4, 13) and y.dtype == torch.float16
    assert gt.shape == (4, 37) and gt.dtype == torch.float32


def test_opcheck() -> None:
    import qgen_infer.kernels.ops  # noqa: F401

    _, p = _op_args()
    x = torch.randn(3, 37, device=DEVICE, requires_grad=True)
    alpha = torch.rand(13, device=DEVICE)
    torch.library.opcheck(torch.ops.qgen_infer.packed_gemm.default,
                          (x, p.words, p.scale, p.zero, alpha, None, 2, 37, "tanh", 0.0))
    g = torch.randn(3, 13, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.qgen_infer.packed_gemm_t.default,
                          (g, p.words, p.scale, p.zero, 2, 37))
    y = torch.randn(3, 13, device=DEVICE)
    torch.library.opcheck(torch.ops.qgen_infer.packed_gemm_t_act.default,
                          (g.detach(), y, p.words, p.scale, p.zero, alpha, 2, 37, "leaky_relu",
                           0.2))


@pytest.mark.parametrize("activation", ["leaky_relu", "tanh"])
def test_autograd_matches_reference(activation: str) -> None:
    w, _ = _op_args(bits=4)
    b, ref_b = create_backend(DEVICE), ReferenceBackend()
    alpha, beta = torch.rand(13) + 0.5, torch.randn(13)
    ep = Epilogue(alpha, beta, activation, 0.1)
    x = torch.randn(3, 37, requires_grad=True)
    y = b.gemm(x.to(DEVICE), b.prepare(w), Epilogue(alpha.to(DEVICE), beta.to(DEVICE),
                                                    activation, 0.1))
    gy = torch.randn(3, 13)
    (gx,) = torch.autograd.grad(y, x, gy.to(DEVICE))
    x_ref = x.detach().clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(ref_b.gemm(x_ref, ref_b.prepare(w), ep), x_ref, gy)
    torch.testing.assert_close(gx.cpu(), gx_ref, rtol=1e-4, atol=1e-5)

    # differentiating the backward takes the torch-op path (the fused op has no autograd)
    (gx2,) = torch.autograd.grad(b.gemm(x.to(DEVICE), b.prepare(w), Epilogue(
        alpha.to(DEVICE), beta.to(DEVICE), activation, 0.1)), x, gy.to(DEVICE),
        create_graph=True)
    torch.testing.assert_close(gx2.detach().cpu(), gx_ref, rtol=1e-4, atol=1e-5)

    g = torch.randn(3, 13, requires_grad=True)
    out = b.gemm_t(g.to(DEVICE), b.prepare(w))
    go = torch.randn(3, 37)
    (gg,) = torch.autograd.grad(out, g, go.to(DEVICE))
    torch.testing.assert_close(gg.cpu(), go @ w.dequantize().t(), rtol=1e-4, atol=1e-5)


# --- configs and the tuning cache ------

def test_config_helpers() -> None:
    from qgen_infer.kernels.common import reduction_slices

    assert [configs.bucket_m(m) for m in (1, 2, 3, 16, 17, 5000, 10**6)] == \
        [1, 2, 4, 16, 32, 8192, 8192]
    for length in (1, 7, 64, 100, 1000):
        for split in (1, 3, 8):
            per, slices = reduction_slices(length, split, 16)
            assert per % 16 == 0 and (slices - 1) * per < length <= slices * per
    for m in (1, 4, 16, 17, 300):
        for cfg in configs.candidates(m, 500, 784, "gemm") + [
                configs.heuristic(m, 8192, 8192, "gemm"), configs.heuristic(m, 512, 784, "gemm_t")]:
            if cfg.path == "dot":  # tl.dot needs every tile side >= 16
                assert min(cfg.block_m, cfg.block_n, cfg.block_k) >= 16
    with pytest.raises(ValueError, match="power of two"):
        KernelConfig("dot", 16, 24, 32)


@pytest.mark.parametrize("op", ["gemm", "gemm_t"])
@pytest.mark.parametrize("sms", [78, 132])
def test_untuned_launches_fill_the_gpu(op: str, sms: int) -> None:
    """M > 16: the heuristic's first config launches at least 3/4 of a wave of programs on its
    own, or is the smallest tile with the reduction split to reach a wave (within the split's
    limits: <= 16 slices, >= 2 reduction blocks each); its fallbacks need ever less shared memory.
    The MNIST layers at M = 256 (latency-bound at 8-32 programs before) get >= 3/4 of a wave,
    and the autotuner is offered a split launch of a wave for them."""
    from qgen_infer.kernels.common import reduction_slices

    def red_block(c: KernelConfig) -> int:
        return c.block_k if op == "gemm" else c.block_n

    def footprint(c: KernelConfig) -> int:
        out_block = c.block_n if op == "gemm" else c.block_k
        return (c.block_m + out_block) * red_block(c)

    for m, out_dim, red_dim in [(17, 500, 784), (256, 500, 784), (256, 784, 500),
                                (256, 500, 500), (300, 7, 4096), (4096, 8192, 8192),
                                (64, 64, 64), (1000, 13, 31)]:
        ladder = configs.heuristic_ladder(m, out_dim, red_dim, op, sms=sms)
        head = ladder[0]
        launched = configs.programs(head, m, out_dim, op)
        per, slices = reduction_slices(red_dim, head.split, red_block(head))
        assert head.split <= 16 and (head.split == 1 or per >= 2 * red_block(head))
        if launched * 4 < sms * 3:
            assert (head.block_m, footprint(head)) == (32, 64 * 64)  # the smallest fill tile
            assert launched * head.split >= sms or head.split == max(1, min(
                16, -(-red_dim // red_block(head)) // 2))
        assert all(footprint(a) > footprint(b) for a, b in zip(ladder, ladder[1:], strict=False))
        assert all(c.split == head.split for c in ladder)
        if (m, red_dim) == (256, 784) or (m, red_dim) == (256, 500):
            assert launched * slices * 4 >= sms * 3
            assert any(configs.programs(c, m, out_dim, op) * c.split >= sms
                       for c in configs.candidates(m, out_dim, red_dim, op, sms=sms)
                       if c.split > 1)


def test_heuristic_ladder_falls_back_when_shared_memory_overflows() -> None:
    """A ladder entry that does not fit (Triton raises OutOfResources at launch) is skipped, the
    first that launches is kept for the key, and the last entry is the answer of last resort."""
    from triton.runtime.errors import OutOfResources

    def launcher(ladder, tried, fits_from):
        def run(cfg):
            tried.append(cfg)
            if ladder.index(cfg) < fits_from:
                raise OutOfResources(300_000, 232_448, "shared memory")
        return run

    configs.reset_cache()
    for m, op in [(1, "gemm"), (16, "gemm_t"), (256, "gemm"), (4096, "gemm_t")]:
        ladder = configs.heuristic_ladder(m, 500, 784, op)
        assert ladder[0] == configs.heuristic(m, 500, 784, op) and len(ladder) >= 3
        key = configs.TuneKey("dev", op, 3, "float32", configs.bucket_m(m), 500, 784)
        tried: list = []
        run = launcher(ladder, tried, 1)
        assert configs._first_that_launches(key, ladder, run) == ladder[1]
        assert configs._first_that_launches(key, ladder, run) == ladder[1]  # remembered
        assert tried == ladder[:2]
        key_none = configs.TuneKey("dev", op, 3, "float32", configs.bucket_m(m), 7, 7)
        none_fit = launcher(ladder, [], len(ladder))
        assert configs._first_that_launches(key_none, ladder, none_fit) == ladder[-1]
    configs.reset_cache()
    assert not configs._fallbacks


def test_autotune_skips_failing_and_disagreeing_configs(monkeypatch) -> None:
    """The tuner keeps the fastest config whose output agrees with the first one that ran; a
    faster one with a wrong result (a miscompile) or one that raises is never chosen."""
    import triton.testing

    cfgs = [KernelConfig("dot", 16, 32, 32), KernelConfig("dot", 16, 32, 64, word_decode=True),
            KernelConfig("dot", 32, 32, 32), KernelConfig("gemv", 1, 32, 32)]
    ref = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    results = {cfgs[0]: ref, cfgs[1]: ref + 1.0, cfgs[2]: ref * (1 + 1e-4)}
    times = {cfgs[0]: 3.0, cfgs[1]: 1.0, cfgs[2]: 2.0}
    current = {}

    def run(cfg):
        if cfg not in results:
            raise RuntimeError("out of resource: shared memory")
        current["cfg"] = cfg
        return results[cfg].clone()

    monkeypatch.setattr(triton.testing, "do_bench",
                        lambda fn, warmup, rep: (fn(), times[current["cfg"]])[1])
    best = configs.autotune(run, cfgs)
    assert best is not None and best[0] == cfgs[2] and best[1] == pytest.approx(2000.0)
    assert configs._agrees(ref.half(), ref) and not configs._agrees(ref.flip(0), ref)
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert not configs._agrees(nan, ref) and configs._agrees(nan, nan.clone())


def test_cache_roundtrip(tmp_path, monkeypatch) -> None:
    path = tmp_path / "cfg.json"
    monkeypatch.setenv("QGEN_TRITON_CONFIGS", str(path))
    configs.reset_cache()
    key = configs.TuneKey("Some GPU", "gemm", 3, "float16", 16, 4096, 4096)
    cfg = KernelConfig("dot", 16, 64, 128, split=4, num_warps=4, num_stages=3)
    configs.store(key, cfg, 12.5)
    configs.reset_cache()
    assert configs.lookup(key) == cfg
    text = path.read_text()
    assert '"device": "Some GPU"' in text and '"m_bucket": 16' in text  # readable, named fields
    path.write_text("{not json")
    configs.reset_cache()
    assert configs.lookup(key) is None  # an unreadable cache is ignored, not fatal
    configs.reset_cache()


# --- GPU only ------

GPU_TOL = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("m", [1, 16, 256, 4096])
@pytest.mark.parametrize("bits", [1, 3, 4])
def test_gpu_full_size(bits: int, m: int, dtype: torch.dtype) -> None:
    n, k = 4096, 4096 - 13  # K off every block multiple
    w = make_weight(n, k, bits)
    b = create_backend("cuda")
    p = b.prepare(w)
    wd = w.dequantize().cuda().double()
    x = torch.randn(m, k, device="cuda").to(dtype)
    g = torch.randn(m, n, device="cuda").to(dtype)
    for y, ref, bound in (
        (b.gemm(x, p), x.double() @ wd.t(), x.double().abs() @ wd.abs().t()),
        (b.gemm_t(g, p), g.double() @ wd, g.double().abs() @ wd.abs()),
    ):
        err = (y.double() - ref).abs()
        assert (err <= GPU_TOL[dtype] * bound + 1e-30).all(), (err / bound).max().item()


@gpu
@needs_cuda
def test_gpu_tf32_tolerance() -> None:
    w = make_weight(1024, 1000, 2)
    b = create_backend("cuda")
    p = b.prepare(w)
    x = torch.randn(256, 1000, device="cuda")
    wd = w.dequantize().cuda().double()
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        y = b.gemm(x, p)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    err = (y.double() - x.double() @ wd.t()).abs()
    assert (err <= 2 * 2.0**-11 * (x.double().abs() @ wd.abs().t())).all()


@gpu
@needs_cuda
def test_gpu_cuda_graph_capture() -> None:
    w = make_weight(512, 784, 4)
    b = create_backend("cuda")
    p = b.prepare(w)
    x = torch.randn(16, 784, device="cuda")
    ep = Epilogue(None, torch.randn(512, device="cuda"), "leaky_relu", 0.2)
    y0 = b.gemm(x, p, ep) + 0  # warm up (compiles) outside the capture
    b.gemm_t(y0, p)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = b.gemm(x, p, ep)
        gx = b.gemm_t(y, p)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, b.gemm(x, p, ep))
    torch.testing.assert_close(gx, b.gemm_t(y, p))


@gpu
@needs_cuda
def test_gpu_autotune_writes_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QGEN_TRITON_CONFIGS", str(tmp_path / "tuned.json"))
    monkeypatch.setenv("QGEN_TRITON_AUTOTUNE", "1")
    configs.reset_cache()
    try:
        w = make_weight(1024, 768, 1)
        b = create_backend("cuda")
        p = b.prepare(w)
        x = torch.randn(1, 768, device="cuda", dtype=torch.float16)
        y = b.gemm(x, p)
        assert (tmp_path / "tuned.json").exists()
        ref = x.double() @ w.dequantize().cuda().double().t()
        bound = x.double().abs() @ w.dequantize().cuda().double().abs().t()
        assert ((y.double() - ref).abs() <= GPU_TOL[torch.float16] * bound).all()
    finally:
        configs.reset_cache()


@gpu
@needs_cuda
def test_gpu_torch_compile_fullgraph() -> None:
    w = make_weight(256, 100, 3)
    b = create_backend("cuda")
    p = b.prepare(w)

    @torch.compile(fullgraph=True)
    def step(z):
        y = b.gemm(z, p, Epilogue(None, None, "tanh"))
        return b.gemm_t(y, p)

    z = torch.randn(8, 100, device="cuda")
    torch.testing.assert_close(step(z), b.gemm_t(b.gemm(z, p, Epilogue(None, None, "tanh")), p))
