"""Plot eval PSNR against Adam steps from qgen-train run folders (their log.jsonl files).

    python paper/plot_training.py runs/mnist-m25-* --out bench/results/mnist-training.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (with log.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="Eval PSNR during training (MNIST, m = 25, s = 100)")
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in sorted(args.runs):
        recs = [r for r in read_log(run) if "eval_psnr" in r]
        if not recs:
            continue
        ax.plot([r["step"] for r in recs], [r["eval_psnr"] for r in recs], label=run.name)
    ax.set_xlabel("Adam steps (batch 64)")
    ax.set_ylabel("eval PSNR (dB), 1,000 images, T = 3, 1 restart")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
