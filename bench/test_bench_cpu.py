"""CPU kernel benchmarks: packed bit-plane LUT GEMM vs torch fp32 / bf16, the reference backend
and ggml, per bit width, shape and batch.

Run (both cores; the md report is written from the JSON)::

    OMP_NUM_THREADS=2 python -m pytest bench/test_bench_cpu.py --benchmark-only \
        --benchmark-group-by=param:bits,param:shape,param:M --benchmark-columns=min,median,rounds \
        --benchmark-max-time=0.25 --benchmark-json=bench/results/cpu-kernels.json
    python bench/make_cpu_report.py bench/results/cpu-kernels.json bench/results/cpu-kernels.md

Each benchmark records in ``extra_info`` the packed-weight bytes it streams and the equivalent
dense FLOPs ``2 M N K``, and both divided by the median time (``GB/s``, ``GFLOP/s``); the
report recomputes them from the fastest round.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")
_cpu = pytest.importorskip("qgen_infer._cpu", reason="CPU extension qgen_infer._cpu not built")

import ggml_ref  # noqa: E402

from qgen_infer.engine.backend import MatrixWeight, ReferenceBackend  # noqa: E402
from qgen_infer.engine.cpu_backend import create_backend  # noqa: E402

THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
# name -> (K, N) of the matrix view; DCGAN: the 512->256 4x4 ConvTranspose as a per-pixel GEMM
# (N = C_out * kh * kw), its M = 16 input pixels x batch.
SHAPES = {
    "mnist784x500": (784, 500),
    "mnist500x500": (500, 500),
    "mnist500x784": (500, 784),
    "dcgan512x4096": (512, 4096),
    "sq4096": (4096, 4096),
}
CASES = [(s, m) for s in ("mnist784x500", "mnist500x500", "mnist500x784") for m in (1, 64, 1024)]
CASES += [("dcgan512x4096", 16 * 16), ("sq4096", 1), ("sq4096", 16)]
# ggml's block types per width: "ggml" the closest, "ggml-alt" the ternary one ggml has for
# 1-2 bits (TQ1_0 stores our 1-bit codes exactly; TQ2_0 is a speed reference for 2 bits)
GGML_TYPE = {1: "Q1_0", 2: "Q2_K", 3: "Q3_K", 4: "Q4_0"}
GGML_ALT_TYPE = {1: "TQ1_0", 2: "TQ2_0"}
IMPLS = ["cpu-planes", "cpu-planes-gemm_t", "torch-fp32", "torch-fp32-gemm_t", "torch-bf16",
         "reference", "ggml", "ggml-alt"]


def _weight(bits: int, n: int, k: int) -> MatrixWeight:
    """LinearQuantize-style codes (zero = 2^(k-1), or 1/2 for one bit), every code present."""
    gen = torch.Generator().manual_seed(bits * 7919 + n + k)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    codes.view(-1)[: 1 << bits] = torch.arange(1 << bits, dtype=torch.uint8)
    scale = torch.rand(n, generator=gen) * 0.01 + 0.01
    zero = torch.full((n,), 0.5 if bits == 1 else float(1 << (bits - 1)))
    return MatrixWeight(codes, scale, zero, bits)


_cache: dict[tuple, object] = {}


def _setup(bits: int, shape: str, m: int):
    key = (bits, shape, m)
    if key not in _cache:
        k, n = SHAPES[shape]
        w = _weight(bits, n, k)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k))
        g = torch.randn(m, n, generator=torch.Generator().manual_seed(m + n))
        _cache.clear()  # one case at a time: the 4096^2 fp32 copies are 64 MB each
        _cache[key] = (w, x, g)
    return _cache[key]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape,M", CASES)
def test_gemm(benchmark, impl: str, bits: int, shape: str, M: int) -> None:
    w, x, g = _setup(bits, shape, M)
    n, k = w.shape
    info = benchmark.extra_info
    info.update(M=M, K=k, N=n, bits=bits, flops=2 * M * n * k, threads=THREADS)

    if impl.startswith("cpu-planes"):
        be = create_backend()
        p = be.prepare(w)
        info.update(weight_bytes=p.nbytes, kernel=be.kernel_name(bits, impl.endswith("gemm_t")))
        if impl == "cpu-planes":
            y = benchmark(be.gemm, x, p)
            ref = x @ w.dequantize().T
        else:
            y = benchmark(be.gemm_t, g, p)
            ref = g @ w.dequantize()
        info["max_rel_err"] = float((y - ref).abs().max() / ref.abs().max())
    elif impl in ("torch-fp32", "torch-fp32-gemm_t", "reference"):
        wd = w.dequantize()
        info.update(weight_bytes=wd.numel() * 4)
        if impl == "torch-fp32":
            benchmark(F.linear, x, wd)
        elif impl == "torch-fp32-gemm_t":
            benchmark(torch.matmul, g, wd)
        else:
            rb = ReferenceBackend()
            benchmark(rb.gemm, x, rb.prepare(w))
    elif impl == "torch-bf16":
        wb, xb = w.dequantize().bfloat16(), x.bfloat16()
        info.update(weight_bytes=wb.numel() * 2)
        benchmark(F.linear, xb, wb)
    elif impl in ("ggml", "ggml-alt"):
        name = (GGML_TYPE if impl == "ggml" else GGML_ALT_TYPE).get(bits)
        qt = ggml_ref.qtype(name) if name else None
        if qt is None:
            pytest.skip(f"ggml-python not installed, or no {impl} type for {bits} bits")
        # ggml blocks run along K (32 or 256 values): pad K with zeros in W and x.
        blk = int(ggml_ref.ggml.ggml_blck_size(qt))
        kp = -(-k // blk) * blk
        wd = np.zeros((n, kp), np.float32)
        wd[:, :k] = w.dequantize().numpy()
        xp = np.zeros((M, kp), np.float32)
        xp[:, :k] = x.numpy()
        mm = ggml_ref.GgmlMatmul(wd, xp, qt, THREADS)
        info.update(weight_bytes=mm.wbytes, ggml_type=name, padded_K=kp)
        benchmark(mm.run)
        ref = xp @ wd.T
        info["max_rel_err"] = float(np.abs(mm.result() - ref).max() / np.abs(ref).max())
        mm.close()
    else:  # pragma: no cover
        raise AssertionError(impl)
    med = benchmark.stats.stats.median
    info["GB/s"] = info["weight_bytes"] / med / 1e9
    info["GFLOP/s"] = info["flops"] / med / 1e9


# The generator's first layer reads the s-sparse latent: the cpu backend's sparse-input path
# (csrc/README.md) against dense torch fp32 on the same x and torch's CSR sparse x dense product.
SPARSE_IMPLS = ["cpu-planes", "torch-fp32", "torch-fp32-csr"]


@pytest.mark.parametrize("impl", SPARSE_IMPLS)
@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("s", [25, 100])
def test_sparse_latent(benchmark, impl: str, bits: int, s: int) -> None:
    k, n = SHAPES["mnist784x500"]
    m = 256
    w = _weight(bits, n, k)
    gen = torch.Generator().manual_seed(s)
    support = torch.rand(m, k, generator=gen).argsort(dim=1)[:, :s]
    x = torch.zeros(m, k).scatter(1, support, torch.randn(m, s, generator=gen))
    info = benchmark.extra_info
    info.update(M=m, K=k, N=n, bits=bits, s=s, flops=2 * m * n * k, threads=THREADS)
    wd = w.dequantize()
    if impl == "cpu-planes":
        be = create_backend()
        p = be.prepare(w)
        y = benchmark(be.gemm, x, p)
        ref = x @ wd.T
        info["max_rel_err"] = float((y - ref).abs().max() / ref.abs().max())
    elif impl == "torch-fp32":
        benchmark(F.linear, x, wd)
    else:
        xs, wt = x.to_sparse_csr(), wd.T.contiguous()
        benchmark(torch.sparse.mm, xs, wt)
