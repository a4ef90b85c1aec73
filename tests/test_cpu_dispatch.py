"""The cpu backend's dispatcher: per layer and batch bucket, the packed kernels or a dense fp32
matmul, whichever was measured faster (``qgen_infer/engine/cpu_dispatch.py``).

The choice logic is tested with injected timings (deterministic); both paths are held to the
plain-PyTorch reference on random inputs and awkward shapes."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from qgen_infer.engine import get_backend
from qgen_infer.engine.backend import (
    ACTIVATIONS,
    Epilogue,
    MatrixWeight,
    gemm_reference,
    gemm_t_reference,
)
from qgen_infer.engine.cpu_dispatch import (
    CostTable,
    Dispatcher,
    ProductKey,
    default_cache_path,
    dispatch_mode,
    faster_path,
    is_sparse_input,
    m_bucket,
    machine_context,
)
from qgen_infer.errors import QgenError

cpu_backend = pytest.importorskip("qgen_infer.engine.cpu_backend")


@pytest.fixture(scope="module", autouse=True)
def exact_kernels():
    """The packed path here is the exact kernels' (held to 2e-5 of the reference); the AVX2
    int8-table path's dispatch is tested in tests/test_lut_i8.py."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QGEN_CPU_INT_TABLES", "off")
        yield
if not cpu_backend.is_available():
    pytest.skip("CPU extension qgen_infer._cpu not built", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
KEY = ProductKey("gemm", 1, 500, 784, 256, True)


class FakeClock:
    """``measure`` with fixed seconds per path, recording the order of the timed calls."""

    def __init__(self, packed_s: float, dense_s: float) -> None:
        self.seconds = {"packed": packed_s, "dense": dense_s}
        self.calls: list[str] = []

    def __call__(self, path: str, run):
        self.calls.append(path)
        return self.seconds[path], run()


def paths() -> tuple:
    return (lambda: "packed"), (lambda: "dense")


def test_buckets_ties_and_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [m_bucket(m) for m in (0, 1, 2, 3, 64, 65, 232, 256, 257)] == \
        [1, 1, 2, 4, 64, 128, 256, 256, 512]
    assert faster_path(1.0, 1.0) == "packed" and faster_path(2.0, 1.0) == "dense"
    assert is_sparse_input(torch.tensor([[0.0, 0, 0, 0, 1.5]]))
    assert not is_sparse_input(torch.tensor([[0.0, 0, 0, 1, 1.5]]))
    monkeypatch.delenv("QGEN_CPU_DISPATCH", raising=False)
    assert dispatch_mode(None) == dispatch_mode("auto") == "measured"
    assert dispatch_mode("packed") == "packed"
    monkeypatch.setenv("QGEN_CPU_DISPATCH", "dense")
    assert dispatch_mode("auto") == "dense" and dispatch_mode("packed") == "packed"
    monkeypatch.setenv("QGEN_CPU_DISPATCH", "fastest")
    with pytest.raises(QgenError, match="QGEN_CPU_DISPATCH must be one of"):
        dispatch_mode("auto")


@pytest.mark.parametrize("packed_s,dense_s,winner,timed", [
    (1.0, 3.0, "packed", 2),   # decisive after one round
    (5.0, 1.0, "dense", 2),
    (1.0, 1.5, "packed", 6),   # close: three rounds
    (1.2, 1.0, "dense", 6),
])
def test_dispatcher_picks_the_measured_faster_path_once(packed_s: float, dense_s: float,
                                                        winner: str, timed: int) -> None:
    clock = FakeClock(packed_s, dense_s)
    d = Dispatcher(CostTable(None), measure=clock)
    assert d.run("ctx", KEY, *paths()) == winner  # the first call returns the winner's result
    assert len(clock.calls) == timed and clock.calls[:2] == ["packed", "dense"]
    if timed > 2:  # rounds alternate the order
        assert clock.calls[2:4] == ["dense", "packed"]
    for _ in range(3):
        assert d.run("ctx", KEY, *paths()) == winner
    assert len(clock.calls) == timed  # measured once per key
    (row,) = d.report()
    assert row["path"] == winner and row["source"] == "measured"
    assert row["packed_ms"] == pytest.approx(packed_s * 1e3)


def test_single_threaded_products_are_timed_in_thread_cpu_time() -> None:
    """A path that waits (as a descheduled one does) costs wall time but no CPU time."""
    import time

    def waits() -> str:
        time.sleep(0.1)
        return "waited"

    def computes() -> str:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.002:
            pass
        return "computed"

    assert Dispatcher(CostTable(None)).run("ctx", KEY, waits, computes,
                                           single_thread=True) == "waited"
    assert Dispatcher(CostTable(None)).run("ctx", KEY, waits, computes) == "computed"


def test_each_bucket_and_context_gets_its_own_choice() -> None:
    d = Dispatcher(CostTable(None), measure=FakeClock(1.0, 3.0))
    assert d.run("ctx", KEY, *paths()) == "packed"
    d.measure = FakeClock(3.0, 1.0)
    big = ProductKey("gemm", 1, 500, 784, 1024, True)
    assert d.run("ctx", big, *paths()) == "dense"
    assert d.run("ctx-2threads", KEY, *paths()) == "dense"
    assert d.run("ctx", KEY, *paths()) == "packed"


def test_cost_table_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cpu-dispatch.json"
    CostTable(path).put("ctx", KEY, 1e-3, 2e-3)
    other = ProductKey("gemm_t", 4, 784, 500, 64, False)
    CostTable(path).put("ctx", other, 5e-3, 1e-3)  # a second process adds, never drops
    table = CostTable(path)
    assert table.get("ctx", KEY) == (1e-3, 2e-3) and table.get("ctx", other) == (5e-3, 1e-3)
    assert table.get("another machine", KEY) is None
    # a later process takes the file's choice without timing anything
    clock = FakeClock(9.0, 9.0)
    d = Dispatcher(CostTable(path), measure=clock)
    assert d.run("ctx", other, *paths()) == "dense" and clock.calls == []
    assert d.report()[0]["source"] == "cache"
    # a corrupt file is an empty cache, and the next measurement rewrites it
    path.write_text("{not json")
    assert CostTable(path).get("ctx", KEY) is None
    CostTable(path).put("ctx", KEY, 1.0, 2.0)
    assert json.loads(path.read_text())["contexts"]["ctx"][KEY.text()] == [1.0, 2.0]


def test_cache_path_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", "off")
    assert default_cache_path() is None
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", str(tmp_path / "c.json"))
    assert default_cache_path() == tmp_path / "c.json"
    monkeypatch.delenv("QGEN_CPU_DISPATCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "qgen-infer" / "cpu-dispatch.json"
    assert "3 threads" in machine_context("avx2", 3) and "avx2" in machine_context("avx2", 3)


def make_weight(bits: int, n: int, k: int, gen: torch.Generator) -> MatrixWeight:
    """Random codes with every value present, random scales and zeros."""
    top = 1 << bits
    codes = torch.randint(0, top, (n, k), generator=gen, dtype=torch.uint8)
    codes.view(-1)[:top] = torch.arange(top, dtype=torch.uint8)
    return MatrixWeight(codes, torch.rand(n, generator=gen) + 0.05,
                        torch.rand(n, generator=gen) * (top - 1), bits)


def assert_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape and got.dtype == torch.float32
    scale = max(ref.abs().max().item(), 1e-6)
    assert (got - ref).abs().max().item() <= 2e-5 * scale


@pytest.mark.parametrize("dispatch", ["packed", "dense", "measured"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 29, 45), (7, 53, 37), (70, 100, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_every_path_matches_the_reference(dispatch: str, bits: int,
                                          shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dispatch}{bits}{shape}".encode()))
    w = make_weight(bits, n, k, gen)
    be = cpu_backend.CpuBackend(threads=1, dispatch=dispatch, cost_table=CostTable(None))
    p = be.prepare(w)
    x = torch.randn(m, k, generator=gen)
    g = torch.randn(m, n, generator=gen)
    assert_close(be.gemm(x, p), gemm_reference(x, w))
    assert_close(be.gemm_t(g, p), gemm_t_reference(g, w))
    for act in ACTIVATIONS:
        for alpha, beta in ((None, None), (None, torch.randn(n, generator=gen)),
                            (torch.randn(n, generator=gen), torch.randn(n, generator=gen))):
            ep = Epilogue(alpha, beta, act, 0.2)
            xr = x.clone().requires_grad_(True)
            y_ref = gemm_reference(xr, w, ep)
            y_ref.backward(g)
            y = be.gemm(x, p, ep)
            assert_close(y, y_ref.detach())
            assert_close(be.gemm_t_through_epilogue(g, y, p, ep), xr.grad)
    assert be.gemm(x[:0], p).shape == (0, n)


def test_dense_and_packed_paths_agree_for_a_negative_leaky_slope() -> None:
    """act' from the output (the engine's convention) on both paths, also where aten's in-place
    leaky_relu_backward would refuse the slope."""
    gen = torch.Generator().manual_seed(11)
    w = make_weight(2, 24, 40, gen)
    ep = Epilogue(torch.randn(24, generator=gen), torch.randn(24, generator=gen), "leaky_relu",
                  -0.3)
    x, g = torch.randn(6, 40, generator=gen), torch.randn(6, 24, generator=gen)
    out = {}
    for dispatch in ("packed", "dense"):
        be = cpu_backend.CpuBackend(threads=1, dispatch=dispatch, cost_table=CostTable(None))
        p = be.prepare(w)
        y = be.gemm(x, p, ep)
        out[dispatch] = (y, be.gemm_t_through_epilogue(g, y, p, ep))
    assert_close(out["dense"][0], out["packed"][0])
    assert_close(out["dense"][1], out["packed"][1])


def test_backend_routes_by_injected_timings() -> None:
    """Injected costs decide each op's path; a layer whose products all stay packed never
    dequantizes its weight."""
    gen = torch.Generator().manual_seed(7)
    w = make_weight(2, 40, 64, gen)
    be = cpu_backend.CpuBackend(threads=1, dispatch="measured", cost_table=CostTable(None))
    p = be.prepare(w)
    x, g = torch.randn(5, 64, generator=gen), torch.randn(5, 40, generator=gen)
    be.dispatcher.measure = FakeClock(3.0, 1.0)
    assert_close(be.gemm(x, p), gemm_reference(x, w))
    be.dispatcher.measure = FakeClock(1.0, 3.0)
    assert_close(be.gemm_t(g, p), gemm_t_reference(g, w))
    assert p.routes == {("gemm", 8, 1): "dense", ("gemm_t", 8, 1): "packed"}
    report = be.dispatch_report()
    assert report["mode"] == "measured" and report["threads"] == 1
    assert {(c["product"], c["path"]) for c in report["choices"]} == {
        ("gemm w2 40x64 M<=8", "dense"), ("gemm_t w2 40x64 M<=8", "packed")}
    # all packed from the cost table: no fp32 copy is ever made
    table = CostTable(None)
    context = machine_context(be.isa, 1)
    for key_op in ("gemm", "gemm_t"):
        table.put(context, ProductKey(key_op, 2, 40, 64, 8, False), 1.0, 2.0)
    lean = cpu_backend.CpuBackend(threads=1, dispatch="measured", cost_table=table)
    q = lean.prepare(w)
    lean.gemm(x, q)
    lean.gemm_t(g, q)
    assert q._dense is None and q.source is not None


def test_packed_backend_keeps_no_codes() -> None:
    gen = torch.Generator().manual_seed(3)
    p = cpu_backend.create_backend(threads=1).prepare(make_weight(1, 16, 32, gen))
    assert p.source is None
    with pytest.raises(RuntimeError, match="without its codes"):
        p.dense()


def test_auto_is_the_measured_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QGEN_CPU_DISPATCH", raising=False)
    assert get_backend("cpu").dispatch == "packed"
    auto = get_backend("auto")
    assert auto.name == "cpu" and auto.dispatch == "measured"


def test_reconstruction_with_auto_reports_its_choices(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """The shipped 1-bit MNIST model through ``auto``: every layer's forward and backward
    product gets a choice, the file is written, and the result equals the reference's."""
    import qgen_infer
    from qgen_infer.reconstruction import solver_options

    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", str(tmp_path / "costs.json"))
    y = np.random.default_rng(0).standard_normal((12, 25)).astype(np.float32)
    out = {}
    for backend in ("auto", "reference"):
        model = qgen_infer.load(REPO / "models" / "mnist-m25-1bit.qgen", backend=backend)
        out[backend] = qgen_infer.reconstruct(model, y, solver_options(model, seed=0),
                                              precision="fp32").x_hat  # auto: A in bf16 on AMX
        if backend == "auto":
            choices = model.backend.dispatch_report()["choices"]
            assert {c["product"].split()[0] for c in choices} == {"gemm", "gemm_t_epi"}
            assert len(choices) == 6  # 3 layers x (forward, backward), one batch bucket
    assert np.abs(out["auto"] - out["reference"]).max() < 1e-3
    assert (tmp_path / "costs.json").exists()


def test_qgen_info_shows_the_recorded_choices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys) -> None:
    from qgen_infer.cli.info import main as info_main

    model = str(REPO / "models" / "mnist-m25-1bit.qgen")
    cache = tmp_path / "costs.json"
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", str(cache))
    assert info_main([model]) == 0
    assert "cpu dispatch" not in capsys.readouterr().out  # only asked for: it imports torch
    assert info_main([model, "--dispatch"]) == 0
    out = capsys.readouterr().out
    assert "nothing measured yet" in out
    assert "precision auto (--backend auto on the CPU): sensing net " in out
    table = CostTable(cache)
    table.put("machine A | avx2 | 1 threads", ProductKey("gemm", 1, 500, 500, 256, False),
              2e-3, 1e-3)
    table.put("machine A | avx2 | 1 threads", ProductKey("gemm", 4, 500, 500, 256, False),
              1e-3, 2e-3)  # another width: not this file's
    assert info_main([model, "--dispatch"]) == 0
    out = capsys.readouterr().out
    assert "machine A | avx2 | 1 threads" in out
    assert "fc2: gemm M<=256 -> dense (packed 2.000 ms, dense 1.000 ms)" in out
    assert "packed 1.000 ms" not in out
