"""The packed CPU kernel of one ISA tier against torch fp32 and ggml, implementations interleaved
round by round in one process (the ratios a busy, shared machine cannot skew much).

Per case (M x K x N) and bit width: ``CpuBackend.gemm`` (the tier given by ``QGEN_CPU_ISA``),
``F.linear`` on the dequantized fp32 weight, and ``ggml_mul_mat`` with the weight in ggml's
closest block type and, for 1-2 bits, its ternary one (Q1_0 / TQ1_0, Q2_K / TQ2_0, Q3_K, Q4_0;
ggml quantizes the activations to 8 bits). Each round times every implementation for >= 20 ms
of calls, the order alternating between rounds; reported: the best per-call time over rounds.

``--emulate-avx2`` stands in for an AVX2-only CPU on an AVX-512 one: it re-executes with torch
limited to AVX2 (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2``), ``QGEN_CPU_ISA=avx2``, and ``--ggml-path`` first on
``PYTHONPATH`` (a ggml-python built for AVX2, see bench/results/cpu-kernels.md).

    OMP_NUM_THREADS=1 python bench/kernel_tiers.py --out bench/results/cpu-kernels-avx512.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "QGEN_CPU_ISA": "avx2"}
CASES = [(1, 4096, 4096), (16, 4096, 4096), (1, 4096, 11008),
         (64, 784, 500), (256, 500, 500), (1024, 500, 500), (256, 1000, 1000)]
GGML_TYPES = {1: ("Q1_0", "TQ1_0"), 2: ("TQ2_0", "Q2_K"), 3: ("Q3_K",), 4: ("Q4_0",)}


def best_per_call(fn, budget: float = 0.02) -> float:
    """Per-call seconds of ``fn`` over a batch of calls lasting about ``budget``."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(budget / one))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def int_table_gemm(w, x):
    """A no-argument call of the integer-table kernel on ``x @ W^T`` (repacked once)."""
    from qgen_infer import _cpu

    nib = _cpu.repack_nibbles(w.codes.numpy(), w.bits)
    xs, scale, zero = x.numpy(), w.scale.numpy(), w.zero.numpy()
    n = w.codes.shape[0]
    return lambda: _cpu.gemm_planes_i8(xs, nib, n, w.bits, scale, zero, threads=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bits", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--emulate-avx2", action="store_true")
    p.add_argument("--ggml-path", default=None, help="put this folder first on PYTHONPATH")
    p.add_argument("--int-tables", action="store_true",
                   help="'ours' is the integer-table kernel (_cpu.gemm_planes_i8: the AVX2 tile, "
                        "or on an AVX-512 tier its zmm tile), with the exact packed kernel as "
                        "another row")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    env = dict(AVX2_ENV) if args.emulate_avx2 else {}
    path = os.environ.get("PYTHONPATH", "")
    if args.ggml_path and path.split(os.pathsep)[0] != args.ggml_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.ggml_path, path]))
    if any(os.environ.get(k) != v for k, v in env.items()):  # once: then they are set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})

    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(BENCH))
    import ggml_ref
    from bench_reconstruct import write_report
    from test_bench_cpu import _weight

    from qgen_infer.engine.cpu_backend import create_backend
    from qgen_infer.engine.cpu_dispatch import cpu_model_name

    torch.set_num_threads(1)
    be = create_backend(threads=1, int_tables="off")  # the exact kernels (gemm_*_planes_f32)
    lines = []
    for m, k, n in CASES:
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k))
        for bits in args.bits:
            w = _weight(bits, n, k)
            wd = w.dequantize()
            prep = be.prepare(w)
            impls = {"ours": lambda prep=prep, x=x: be.gemm(x, prep),
                     "torch fp32": lambda wd=wd, x=x: F.linear(x, wd)}
            if args.int_tables:
                impls = {"ours": int_table_gemm(w, x), "exact packed": impls["ours"],
                         "torch fp32": impls["torch fp32"]}
            mats = []
            for name in GGML_TYPES[bits]:
                qt = ggml_ref.qtype(name)
                if qt is None:
                    continue
                blk = int(ggml_ref.ggml.ggml_blck_size(qt))
                kp = -(-k // blk) * blk
                wp = np.zeros((n, kp), np.float32)
                wp[:, :k] = wd.numpy()
                xp = np.zeros((m, kp), np.float32)
                xp[:, :k] = x.numpy()
                mm = ggml_ref.GgmlMatmul(wp, xp, qt, 1)
                mats.append(mm)
                impls[f"ggml {name}"] = mm.run
            best = {name: float("inf") for name in impls}
            names = list(impls)
            for rnd in range(args.rounds):
                for name in names if rnd % 2 == 0 else names[::-1]:
                    best[name] = min(best[name], best_per_call(impls[name]))
            for mm in mats:
                mm.close()
            ours = best["ours"]
            cells = "; ".join(f"{i} {best[i] * 1e6:,.1f} (x{best[i] / ours:.2f})"
                              for i in names[1:])
            lines.append(f"| {m}×{k}×{n} | {bits} | {ours * 1e6:,.1f} | {cells} |")
            print(lines[-1], flush=True)
    cmd = shlex.join(["python", "bench/kernel_tiers.py", *(argv or sys.argv[1:])])
    head = [f"- command: `OMP_NUM_THREADS=1 {cmd}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; host "
            f"CPU: {cpu_model_name()} ({os.cpu_count()} vCPUs); kernel: "
            f"{'gemm_planes_i8 (int8 tables)' if args.int_tables else be.kernel_name(1)} "
            f"(tier {be.isa}); torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}; ggml-python from "
            f"{Path(ggml_ref.ggml.__file__).parent if ggml_ref.ggml else 'not installed'}"
            + ("; torch limited to AVX2: " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
               if args.emulate_avx2 else ""),
            f"- 1 thread everywhere; best per-call time over {args.rounds} interleaved rounds; "
            "(xR) = that time / ours: > 1 means ours is faster"]
    if args.note:
        head.append(f"- note: {args.note}")
    table = ["", "| M×K×N | bits | ours µs | others µs (× ours) |", "| --- | ---: | ---: | --- |"]
    write_report("\n".join(head + table + lines) + "\n", args.out)


if __name__ == "__main__":
    main()
