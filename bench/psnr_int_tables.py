"""Does the int8-table path keep the engine's accuracy? Mean PSNR on MNIST's 1,000
evaluation images (shipped ``models/mnist-m25-*bit.qgen``, the file's solver defaults, batch 256,
seed 0) with ``--backend cpu`` on the int8 tables (``QGEN_CPU_ISA=--isa``, default avx2, and
``QGEN_CPU_INT_TABLES=on``; avx512 runs that tier's tile) against ``--backend reference`` (dense
fp32). The engine may use the tables by default
(``QGEN_CPU_INT_TABLES=auto``) only at widths within 0.01 dB (``cpu_backend.INT_TABLE_AUTO_BITS``);
exit status 1 when one of those is not.

    OMP_NUM_THREADS=1 python bench/psnr_int_tables.py --out bench/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOLERANCE_DB = 0.01


def mean_psnrs(model_path: str, data_root: Path, images: int = 1000) -> dict[str, float]:
    """Mean PSNR of the reconstructions by the ``reference`` backend and by ``cpu`` on the
    int8 tables (the caller sets QGEN_CPU_ISA and QGEN_CPU_INT_TABLES=on)."""
    import torch

    import qgen_infer
    from qgen_infer.data import load_images, split_train_eval
    from qgen_infer.metrics import psnr
    from qgen_infer.reconstruction import solver_options

    _, evals = split_train_eval(load_images("mnist", data_root), images)
    truth = evals[:images]
    out: dict[str, float] = {}
    y = None
    for backend in ("reference", "cpu"):
        model = qgen_infer.load(model_path, backend=backend)
        if backend == "cpu" and model.bits not in model.backend.int_table_bits:
            raise RuntimeError(f"the cpu backend does not use the int8 tables: {model.backend}")
        if y is None:
            with torch.no_grad():
                y = model.sensing(truth).numpy()
        x_hat = qgen_infer.reconstruct(model, y, solver_options(model, batch_size=256, seed=0),
                                       precision="fp32").x_hat  # the tables' effect alone
        out[backend] = float(psnr(truth, torch.from_numpy(x_hat)).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None, metavar="FILE.qgen")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--isa", choices=("avx2", "avx512"), default="avx2",
                   help="the tier whose integer-table tile runs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ["QGEN_CPU_ISA"] = args.isa
    os.environ["QGEN_CPU_INT_TABLES"] = "on"
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from bench_reconstruct import write_report

    from qgen_infer.engine.cpu_backend import INT_TABLE_AUTO_BITS
    from qgen_infer.engine.cpu_dispatch import cpu_model_name

    torch.set_num_threads(1)
    models = args.model or [str(REPO / "models" / f"mnist-m25-{b}bit.qgen") for b in (1, 2, 3, 4)]
    lines = ["| model | reference PSNR dB | int8 tables PSNR dB | difference dB | "
             "within 0.01 dB | used by auto |", "| --- | ---: | ---: | ---: | --- | --- |"]
    failed = False
    for path in models:
        import qgen_infer

        bits = qgen_infer.load(path, backend="reference").bits
        s = mean_psnrs(path, args.data_root)
        diff = s["cpu"] - s["reference"]
        ok = abs(diff) <= TOLERANCE_DB
        used = bits in INT_TABLE_AUTO_BITS
        failed |= used and not ok
        lines.append(f"| {Path(path).name} | {s['reference']:.4f} | {s['cpu']:.4f} | "
                     f"{diff:+.4f} | {'yes' if ok else 'no'} | {'yes' if used else 'no'} |")
        print(lines[-1], flush=True)
    cmd = shlex.join(["python", "bench/psnr_int_tables.py", *(argv or sys.argv[1:])])
    head = [f"- command: `OMP_NUM_THREADS=1 {cmd}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; host "
            f"CPU: {cpu_model_name()}; int8 tables on the {args.isa} tier (QGEN_CPU_ISA={args.isa} "
            "QGEN_CPU_INT_TABLES=on); 1,000 MNIST eval images, batch 256, seed 0", ""]
    write_report("\n".join(head + lines) + "\n", args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
