"""GPU benchmarks of the packed Triton kernels against cuBLAS (torch fp32 / tf32 / fp16) and
gemlite (when installed), per bit width, on the MNIST generator layers, 512x768, 4096² and 8192²
at M = 1, 16, 256, 4096.

Timing: ``triton.testing.do_bench_cudagraph`` (kernel time, launch overhead excluded: what the
graph-captured solver loop pays) and ``triton.testing.do_bench`` (eager, Python launch included),
both medians in µs, inside ``benchmark.pedantic`` (pytest-benchmark itself does not synchronise
the GPU, so its own timing of the call is meaningless). ``extra_info`` holds µs, GB/s (weight
bytes as stored + activations + output) and TFLOP/s (2·M·N·K). Each result is also appended to
``$QGEN_BENCH_JSONL`` when set, so a run cut short keeps what it measured.

Runs: ``pytest bench/test_bench_gpu.py --benchmark-json=out.json`` or, without pytest-benchmark,
``python bench/test_bench_gpu.py out.jsonl [--deadline S]`` (what ``gpu_suite.sh`` runs, after
compiling every case in parallel with ``--warm``). The whole module skips without CUDA.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    if __name__ == "__main__":
        sys.exit("GPU benchmarks need a CUDA device")
    pytest.skip("GPU benchmarks need a CUDA device", allow_module_level=True)

SHAPES = {  # name: (N, K) of the weight; y = x Wᵀ with x [M, K]
    "mnist_fc1": (500, 784),
    "mnist_fc2": (500, 500),
    "mnist_fc3": (784, 500),
    "n512_k768": (512, 768),
    "sq4096": (4096, 4096),
    "sq8192": (8192, 8192),
}
MS = (1, 16, 256, 4096)
BITS = (1, 2, 3, 4)
BASELINES = ("torch_fp32", "torch_tf32", "torch_fp16")
IMPLS = tuple(f"qgen_{op}_w{b}" for op in ("gemm", "gemm_t") for b in BITS) + BASELINES + tuple(
    f"gemlite_w{b}" for b in (1, 2, 4))


def _weight(n: int, k: int, bits: int):
    from qgen_infer.engine.backend import MatrixWeight

    gen = torch.Generator().manual_seed(n * 31 + k + bits)
    codes = torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8)
    return MatrixWeight(codes, torch.rand(n, generator=gen) * 0.1 + 0.01,
                        torch.full((n,), (2**bits - 1) / 2), bits)


def _time(fn) -> tuple[float, float]:
    import triton.testing

    fn()  # compile / autotune outside the timed and captured region
    torch.cuda.synchronize()
    eager = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3
    try:
        graph = triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median") * 1e3
    except Exception:  # not capturable (e.g. a third-party kernel): report eager only
        graph = float("nan")
    return graph, eager


def _case(impl: str, shape: str, m: int):
    """(callable, weight bytes, activation dtype) for one case, or a skip reason string."""
    n, k = SHAPES[shape]
    dev = "cuda"
    if impl.startswith("qgen_"):
        from qgen_infer.engine.triton_backend import create_backend

        op, bits = impl.removeprefix("qgen_").rsplit("_w", 1)
        b = create_backend(dev)
        p = b.prepare(_weight(n, k, int(bits)))
        a = torch.randn(m, k if op == "gemm" else n, device=dev, dtype=torch.float16)
        fn = (lambda: b.gemm(a, p)) if op == "gemm" else (lambda: b.gemm_t(a, p))
        return fn, p.nbytes(), a
    if impl.startswith("torch_"):
        dtype = torch.float16 if impl == "torch_fp16" else torch.float32
        w = torch.randn(n, k, device=dev, dtype=dtype)
        a = torch.randn(m, k, device=dev, dtype=dtype)
        tf32 = impl == "torch_tf32"

        def fn():
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                return a @ w.t()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old
        return fn, w.numel() * w.element_size(), a
    bits = int(impl.removeprefix("gemlite_w"))
    try:
        from gemlite.core import DType, GemLiteLinear
    except ImportError:
        return "gemlite is not installed"
    try:
        wq = _weight(n, k, bits)
        lin = GemLiteLinear(bits, group_size=k, in_features=k, out_features=n,
                            input_dtype=DType.FP16, output_dtype=DType.FP16)
        lin.pack(wq.codes.to(dev), wq.scale[:, None].half().to(dev),
                 wq.zero[:, None].half().to(dev), None)
        a = torch.randn(m, k, device=dev, dtype=torch.float16)
        lin(a)
    except Exception as e:  # unsupported shape or API drift: a skip, not a failure
        return f"gemlite cannot run this case: {type(e).__name__}: {e}"
    return (lambda: lin(a)), n * k * bits // 8 + 4 * n, a


def measure(impl: str, shape: str, m: int) -> dict:
    n, k = SHAPES[shape]
    case = _case(impl, shape, m)
    if isinstance(case, str):
        return {"impl": impl, "shape": shape, "m": m, "n": n, "k": k, "skipped": case}
    fn, wbytes, a = case
    graph_us, eager_us = _time(fn)
    out_cols = n if not impl.startswith("qgen_gemm_t") else k
    moved = wbytes + a.numel() * a.element_size() + m * out_cols * a.element_size()
    best = graph_us if graph_us == graph_us else eager_us
    row = {"impl": impl, "shape": shape, "m": m, "n": n, "k": k,
           "device": torch.cuda.get_device_name(), "us": round(best, 3),
           "us_graph": round(graph_us, 3), "us_eager": round(eager_us, 3),
           "gbps": round(moved / best / 1e3, 1), "tflops": round(2 * m * n * k / best / 1e6, 3)}
    sink = os.environ.get("QGEN_BENCH_JSONL")
    if sink:
        with open(sink, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_bench(benchmark, impl: str, shape: str, m: int) -> None:
    benchmark.group = f"{shape}-m{m}"
    row = benchmark.pedantic(measure, args=(impl, shape, m), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    if "skipped" in row:
        pytest.skip(row["skipped"])


# (shape, M) groups in the order a time-limited run measures them: the solver's shapes at its
# batch, the GEMV and large-M targets, then everything else.
PRIORITY = [("mnist_fc1", 256), ("mnist_fc2", 256), ("mnist_fc3", 256), ("sq8192", 1),
            ("sq8192", 4096), ("mnist_fc1", 1), ("mnist_fc2", 1), ("mnist_fc3", 1),
            ("sq4096", 4096), ("sq4096", 1)]


def cases(impls: list[str] | None = None, shapes: list[str] | None = None,
          ms: list[int] | None = None) -> list[tuple[str, str, int]]:
    """Every (impl, shape, m), or those the filters keep, grouped by (shape, m) in ``PRIORITY``
    order with the baselines first in each group: a run cut short still has complete
    comparisons for the groups it reached."""
    order = BASELINES + tuple(i for i in IMPLS if i not in BASELINES)
    order = tuple(i for i in order if not impls or any(i.startswith(p) for p in impls))
    groups = PRIORITY + [(sh, m) for sh in SHAPES for m in MS if (sh, m) not in PRIORITY]
    return [(impl, sh, m) for sh, m in groups for impl in order
            if (not shapes or sh in shapes) and (not ms or m in ms)]


def warm(shard: int, shards: int, todo: list[tuple[str, str, int]]) -> None:
    """Compile (and autotune) the packed cases ``i % shards == shard`` without timing them: the
    GPU suite runs shards side by side so that Triton's compiler, one process per kernel, uses
    every CPU core; the binaries land in Triton's on-disk cache for the timed run."""
    qgen = [c for c in todo if c[0].startswith("qgen_")]
    for impl, shape, m in qgen[shard::shards]:
        case = _case(impl, shape, m)
        if not isinstance(case, str):
            case[0]()
    torch.cuda.synchronize()


def main(argv: list[str]) -> int:
    import argparse
    import time

    p = argparse.ArgumentParser(description="GPU kernel benchmarks as plain JSON lines")
    p.add_argument("jsonl", nargs="?", default="bench-gpu.jsonl", help="rows are appended here")
    p.add_argument("--deadline", type=float, default=float("inf"),
                   help="seconds after which no new case is started")
    p.add_argument("--warm", type=int, nargs=2, metavar=("SHARD", "SHARDS"),
                   help="only compile this shard of the packed cases (no timing, no rows)")
    p.add_argument("--impls", nargs="+", help="only implementations starting with these "
                   "(baselines are always kept: every row needs its comparison)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES))
    p.add_argument("--ms", nargs="+", type=int)
    args = p.parse_args(argv)
    impls = args.impls and [*args.impls, *BASELINES]
    todo = cases(impls, args.shapes, args.ms)
    if args.warm:
        warm(*args.warm, todo)
        return 0
    os.environ["QGEN_BENCH_JSONL"] = args.jsonl
    t0 = time.monotonic()
    for impl, shape, m in todo:
        if time.monotonic() - t0 > args.deadline:
            print(json.dumps({"stopped": "deadline", "next": [impl, shape, m]}), flush=True)
            return 0
        print(json.dumps(measure(impl, shape, m)), flush=True)
    return 0


if __name__ == "__main__":  # no pytest-benchmark needed: plain JSON lines
    sys.exit(main(sys.argv[1:]))
