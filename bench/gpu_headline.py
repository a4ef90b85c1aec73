"""The headline of a ``bench/gpu_suite.sh`` run, as markdown on stdout.

    python bench/gpu_headline.py WORKDIR

Reads what the suite left in WORKDIR: ``steps.txt`` (step, exit code, seconds), ``env.log``,
``tests.log``, ``cold-w{bits}/metrics.json`` (the first-call ``qgen-reconstruct`` runs) and
``reconstruct.jsonl`` (``bench_reconstruct_gpu.py`` rows). Prints the device and commit, the
first-call times against the 60 s target, one throughput table (img/s per variant, and packed
over dense fp16 + CUDA graph, the issue's baseline) and the smoke tests' result. A missing piece
prints as missing: the headline of a cut-short run says what was cut.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

FIRST_CALL_TARGET_S = 60.0
BASELINE = "torch-fp16+graph"


def read_steps(work: Path) -> dict[str, tuple[int, float]]:
    """``{step: (rc, seconds)}`` from ``steps.txt`` lines ``name rc=N S.Ss``."""
    out = {}
    text = (work / "steps.txt").read_text() if (work / "steps.txt").exists() else ""
    for line in text.splitlines():
        m = re.fullmatch(r"(\S+) rc=(\d+) ([\d.]+)s", line.strip())
        if m:
            out[m[1]] = (int(m[2]), float(m[3]))
    return out


def read_rows(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a run cut short
    return rows


def last_line(path: Path, pattern: str) -> str:
    if not path.exists():
        return "missing"
    hits = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
            if re.search(pattern, ln)]
    return hits[-1] if hits else "no result line"


def first_call_lines(work: Path, steps: dict) -> list[str]:
    out = [f"## First call: qgen-reconstruct on an empty Triton cache (target <= "
           f"{FIRST_CALL_TARGET_S:.0f} s)", "",
           "| bits | wall s (process, compilation included) | rc | images | PSNR dB | solve s |",
           "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in sorted(n for n in steps if n.startswith("cold-w")):
        rc, secs = steps[name]
        metrics = work / name / "metrics.json"
        images = psnr = solve = "-"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            images = m["summary"]["images"]
            psnr = f"{m['summary'].get('psnr', float('nan')):.2f}"
            solve = f"{m['timing']['seconds']:.2f}"
        verdict = "met" if rc == 0 and secs <= FIRST_CALL_TARGET_S else "NOT met"
        out.append(f"| {name[6:]} | {secs:.1f} ({verdict}) | {rc} | {images} | {psnr} | {solve} |")
    return out


def throughput_lines(rows: list[dict]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    batch = ", ".join(sorted({str(r.get("batch", "?")) for r in rows}))
    out = [f"## Throughput, img/s (batch {batch}; ratio: the best packed variant over dense torch "
           "fp16 + CUDA graph)", "",
           "| bits | T | " + " | ".join(variants) + " | best packed / " + BASELINE + " |",
           "| ---: | ---: |" + " ---: |" * (len(variants) + 1)]
    for bits, steps in dict.fromkeys((r["bits"], r["steps"]) for r in rows):
        got = {r["variant"]: r for r in rows if (r["bits"], r["steps"]) == (bits, steps)}
        cells = [f"{got[v]['img_s']:.0f}" if v in got else "-" for v in variants]
        packed = [r["img_s"] for v, r in got.items() if v.startswith("packed")]
        ratio = (f"{max(packed) / got[BASELINE]['img_s']:.2f}x"
                 if packed and BASELINE in got else "-")
        out.append(f"| {bits} | {steps} | " + " | ".join(cells) + f" | {ratio} |")
    psnr = {(r["bits"], r["variant"]): r["psnr"] for r in rows if "psnr" in r}
    if psnr:
        out += ["", "PSNR (dB, against x = G(z)), per bits and variant: " + "; ".join(
            f"{b}-bit {v} {p:.2f}" for (b, v), p in psnr.items())]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    work = Path(argv[0])
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    steps = read_steps(work)
    env = (work / "env.log").read_text().strip() if (work / "env.log").exists() else "missing"
    lines = ["# GPU suite headline", "",
             f"- machine: {' / '.join(env.splitlines())}", f"- commit: {commit}",
             f"- written: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "- steps (rc, s): " + ", ".join(f"{k} {rc} {s:.0f}" for k, (rc, s) in steps.items()),
             f"- smoke tests: {last_line(work / 'tests.log', r'passed|failed|error')}", ""]
    lines += first_call_lines(work, steps) + [""]
    rows = read_rows(work / "reconstruct.jsonl")
    lines += throughput_lines(rows) if rows else ["## Throughput: no rows (see reconstruct.log)"]
    for name in (n for n in steps if n.startswith("dcgan")):
        log = work / f"{name}.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-4:] if log.exists() else []
        lines += ["", f"## {name} (bench/time_dcgan_reconstruct.py, last lines)", "", "```",
                  *tail, "```"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
