"""Turn the GPU benchmark rows (JSON lines from ``bench/test_bench_gpu.py``) into markdown.

Usage: ``python bench/summarize_gpu.py rows.jsonl [header.md] > summary.md``. Tables give the
kernel time in µs (CUDA-graph replay; eager in the JSON) per shape, implementation and M, then
the issue's targets, each marked met / not met from the numbers alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: str) -> list[dict]:
    """Rows of a JSON-lines file; a missing file or a torn last line (a run cut short) is
    not an error."""
    rows = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def table(rows: list[dict]) -> list[str]:
    ms = sorted({r["m"] for r in rows})
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        sub = [r for r in rows if r["shape"] == shape]
        n, k = sub[0]["n"], sub[0]["k"]
        out += [f"### {shape} (N={n}, K={k}) — µs (GB/s, TFLOP/s)", "",
                "| impl | " + " | ".join(f"M={m}" for m in ms) + " |",
                "|---|" + "---|" * len(ms)]
        for impl in dict.fromkeys(r["impl"] for r in sub):
            cells = []
            for m in ms:
                r = next((r for r in sub if r["impl"] == impl and r["m"] == m), None)
                if r is None:
                    cells.append("")
                elif "skipped" in r:
                    cells.append("skip")
                else:
                    cells.append(f"{r['us']:.1f} ({r['gbps']:.0f}, {r['tflops']:.2f})")
            out.append(f"| {impl} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def targets(rows: list[dict]) -> list[str]:
    def us(impl, shape, m):
        r = next((r for r in rows if r["impl"] == impl and r["shape"] == shape and r["m"] == m
                  and "skipped" not in r), None)
        return None if r is None else r["us"]

    out = ["## Targets", ""]
    for bits, limit in ((1, 6.0), (4, 20.0)):
        t = us(f"qgen_gemm_w{bits}", "sq8192", 1)
        verdict = "not measured" if t is None else ("met" if t <= limit else "NOT met")
        out.append(f"- {bits}-bit GEMV 1×8192²: {t} µs (target ≤ {limit} µs): {verdict}")
    for shape in ("sq4096", "sq8192"):
        ref = us("torch_fp16", shape, 4096)
        for bits in (1, 2, 3, 4):
            t = us(f"qgen_gemm_w{bits}", shape, 4096)
            if t is None or ref is None:
                continue
            ratio = ref / t
            out.append(f"- {shape} M=4096 {bits}-bit: {ratio:.2f}× fp16 cuBLAS speed "
                       f"(target ≥ 0.8×): {'met' if ratio >= 0.8 else 'NOT met'}")
    for r in rows:
        if r["impl"].startswith("gemlite_w") and "skipped" not in r:
            bits = r["impl"].removeprefix("gemlite_w")
            t = us(f"qgen_gemm_w{bits}", r["shape"], r["m"])
            if t is not None:
                out.append(f"- vs gemlite {bits}-bit {r['shape']} M={r['m']}: {t} vs {r['us']} µs"
                           f": {'faster' if t < r['us'] else 'SLOWER'}")
    return out + [""]


def main() -> None:
    rows = load(sys.argv[1])
    header = Path(sys.argv[2]).read_text() if len(sys.argv) > 2 else ""
    if not rows:
        print(header + "\nNo benchmark rows were recorded (see bench.log).")
        return
    print("\n".join([header] + table(rows) + targets(rows)))


if __name__ == "__main__":
    main()
