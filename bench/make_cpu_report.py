"""Turn the pytest-benchmark JSON of ``bench/test_bench_cpu.py`` into markdown tables.

    python bench/make_cpu_report.py bench/results/cpu-kernels.json [out.md] [min|median]

One table per (shape, M): a row per bit width, the time of every implementation (``min`` over
rounds by default: on a shared machine the fastest round is the one least disturbed), the
speed-ups of the packed kernel over torch fp32 and over ggml, and the packed kernel's packed-weight
bandwidth and dense-equivalent GFLOP/s. Prints to stdout when no output path is given.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

IMPLS = ["cpu-planes", "cpu-planes-gemm_t", "torch-fp32", "torch-fp32-gemm_t", "torch-bf16",
         "reference", "ggml", "ggml-alt"]
SPARSE_IMPLS = ["cpu-planes", "torch-fp32", "torch-fp32-csr"]


def _us(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e6:,.0f}" if s >= 1e-4 else f"{s * 1e6:.1f}"


def report(data: dict, stat: str = "min") -> str:
    cases: dict[tuple[str, int], dict[int, dict[str, dict]]] = defaultdict(
        lambda: defaultdict(dict))
    sparse: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        p = b["params"]
        if "s" in p:  # test_sparse_latent: the first layer on the s-sparse latent
            sparse[(p["bits"], p["s"])][p["impl"]] = b
            continue
        cases[(p["shape"], p["M"])][p["bits"]][p["impl"]] = b
    out = []
    for (shape, m), per_bits in cases.items():
        any_b = next(iter(next(iter(per_bits.values())).values()))["extra_info"]
        out.append(f"### {shape} (K={any_b['K']}, N={any_b['N']}), M={m}\n")
        out.append(f"{stat} µs per call; speed-up = other / cpu-planes "
                   "(>1: packed kernel faster)\n")
        out.append("| bits | " + " | ".join(IMPLS) + " | ggml types | ×fp32 | ×bf16 | ×ggml "
                   "| ×ggml-alt | planes GB/s | planes GFLOP/s |")
        out.append("|" + "---|" * (len(IMPLS) + 8))
        for bits in sorted(per_bits):
            row = per_bits[bits]
            med = {i: row[i]["stats"][stat] if i in row else None for i in IMPLS}
            mine = med["cpu-planes"]

            def ratio(other: str, mine: float | None = mine, med: dict = med) -> str:
                return "-" if mine is None or med[other] is None else f"{med[other] / mine:.2f}"

            info = row["cpu-planes"]["extra_info"] if "cpu-planes" in row else {}
            gbs = info.get("weight_bytes", 0) / mine / 1e9 if mine else 0.0
            gfs = info.get("flops", 0) / mine / 1e9 if mine else 0.0
            gtype = " / ".join(row[i]["extra_info"].get("ggml_type", "-")
                               for i in ("ggml", "ggml-alt") if i in row) or "-"
            out.append(f"| {bits} | " + " | ".join(_us(med[i]) for i in IMPLS) + f" | {gtype} | "
                       f"{ratio('torch-fp32')} | {ratio('torch-bf16')} | {ratio('ggml')} | "
                       f"{ratio('ggml-alt')} | {gbs:.1f} | {gfs:.1f} |")
        out.append("")
    if sparse:
        any_b = next(iter(next(iter(sparse.values())).values()))["extra_info"]
        out.append(f"### sparse latent: mnist784x500 (K={any_b['K']}, N={any_b['N']}), "
                   f"M={any_b['M']}, s nonzeros per row\n")
        out.append(f"{stat} µs per call; the cpu backend's sparse-input path against dense "
                   "torch fp32 on the same x and torch's CSR x dense product\n")
        out.append("| bits | s | " + " | ".join(SPARSE_IMPLS) + " | ×fp32 | ×csr |")
        out.append("|" + "---|" * (len(SPARSE_IMPLS) + 4))
        for (bits, s), row in sorted(sparse.items()):
            t = {i: row[i]["stats"][stat] if i in row else None for i in SPARSE_IMPLS}

            def rel(other: str, t: dict = t) -> str:
                mine = t["cpu-planes"]
                return "-" if mine is None or t[other] is None else f"{t[other] / mine:.2f}"

            out.append(f"| {bits} | {s} | " + " | ".join(_us(t[i]) for i in SPARSE_IMPLS)
                       + f" | {rel('torch-fp32')} | {rel('torch-fp32-csr')} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    with open(argv[1]) as f:
        data = json.load(f)
    text = report(data, argv[3] if len(argv) > 3 else "min")
    if len(argv) > 2 and argv[2] != "-":
        with open(argv[2], "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv)
