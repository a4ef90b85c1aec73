"""The integer-table tiles against the exact fp32 kernel and torch fp32, on the MNIST layers.

Per layer shape (M = 256 rows; the generator's 784->500, 500->500, 500->784) and width: the exact
kernel of the tier (``gemm_planes_f32``), ``gemm_planes_i8`` on each integer-table tile this CPU
runs (``avx2``: vpshufb 32 columns; ``avx512``: vpshufb 64; ``avx512vbmi``: vpermb + vpdpbusd,
quads layout) and ``torch.addmm`` on the dequantized fp32 weight, interleaved round by round in
one process, one thread, timed by the process's CPU time (a shared machine's other processes do
not count). Reported: the best ms per call over rounds, and the tiles' max relative error
``max |y - exact| / max |exact|`` against the exact product.

    OMP_NUM_THREADS=1 python bench/int_table_tiles.py --out bench/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
SHAPES = ((256, 784, 500), (256, 500, 500), (256, 500, 784))


def _best_ms(fn: Callable[[], object], reps: int) -> float:
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t0) / reps * 1e3


def _products(x: torch.Tensor, codes: torch.Tensor, bits: int, tiles: list[str],
              exact_isa: str) -> dict[str, Callable[[], object]]:
    """One call per implementation of ``x @ Wᵀ`` for the codes (scale in [0.5, 1.5), zero the
    middle code)."""
    from qgen_infer import _cpu
    from qgen_infer.engine.backend import MatrixWeight

    n = codes.shape[0]
    scale = (torch.rand(n, generator=torch.Generator().manual_seed(n)) + 0.5).numpy()
    zero = np.full(n, ((1 << bits) - 1) / 2, np.float32)
    dense = MatrixWeight(codes, torch.from_numpy(scale), torch.from_numpy(zero),
                         bits).dequantize()
    xs, bias = x.numpy(), torch.zeros(n)
    words = _cpu.repack_planes(codes.numpy(), bits, False, 1)
    calls: dict[str, Callable[[], object]] = {
        "exact": lambda: _cpu.gemm_planes_f32(xs, words, n, bits, scale, zero, isa=exact_isa,
                                              threads=1),
        "torch": lambda: torch.addmm(bias, x, dense.t())}
    for t in tiles:
        layout = (_cpu.repack_quads if t == "avx512vbmi" else _cpu.repack_nibbles)(
            codes.numpy(), bits)
        calls[t] = (lambda layout=layout, t=t: _cpu.gemm_planes_i8(
            xs, layout, n, bits, scale, zero, threads=1, isa=t))
    return calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from qgen_infer import _cpu
    from qgen_infer.engine.cpu_dispatch import cpu_model_name

    sys.path.insert(0, str(BENCH))
    from bench_reconstruct import write_report

    torch.set_num_threads(1)
    tiles = [t for t in ("avx2", "avx512") if t in _cpu.supported_isas()]
    tiles += ["avx512vbmi"] if _cpu.has_vbmi_vnni() else []
    exact_isa = _cpu.best_isa()
    gen = torch.Generator().manual_seed(0)
    lines = ["| bits | M x K -> N | exact fp32 kernel | " + " | ".join(
        f"int8 {t}" for t in tiles) + " | torch fp32 | int8 max rel. error |",
        "| ---: | --- |" + " ---: |" * (len(tiles) + 3)]
    for bits in args.bits:
        for m, k, n in SHAPES:
            x = torch.randn(m, k, generator=gen)
            codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
            calls = _products(x, codes, bits, tiles, exact_isa)
            exact = torch.from_numpy(calls["exact"]())
            err = max(float((torch.from_numpy(calls[t]()) - exact).abs().max()
                            / exact.abs().max()) for t in tiles)
            best = dict.fromkeys(calls, float("inf"))
            for rnd in range(args.rounds):
                for name in (list(calls) if rnd % 2 == 0 else list(calls)[::-1]):
                    best[name] = min(best[name], _best_ms(calls[name], args.reps))
            cells = [f"{best['exact']:.3f}"] + [f"{best[t]:.3f}" for t in tiles] + [
                f"{best['torch']:.3f}", f"{err:.1e}"]
            lines.append(f"| {bits} | {m} x {k} -> {n} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    cmd = shlex.join(["python", "bench/int_table_tiles.py", *(argv or sys.argv[1:])])
    head = [f"- command: `OMP_NUM_THREADS=1 {cmd}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; host "
            f"CPU: {cpu_model_name()}; exact kernel tier: {exact_isa}; ms per call, best of "
            f"{args.rounds} rounds x {args.reps} calls, process CPU time, one thread; load "
            f"average at the end: {os.getloadavg()[0]:.1f}", ""]
    write_report("\n".join(head + lines) + "\n", args.out)


if __name__ == "__main__":
    main()
