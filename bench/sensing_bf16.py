#!/usr/bin/env python
"""What ``precision="auto"`` costs in accuracy where it runs the sensing net in bf16 (the cpu
backend on an AVX-512 CPU with AMX / AVX512-BF16): per model, the relative error of the bf16
sensing net's measurements against the fp32 net's on the data set's 1,000 evaluation images
(per image ``||A_bf16(x) - A(x)|| / ||A(x)||``, mean and max; and the largest
``|A_bf16(x) - A(x)|`` over ``max |A(x)|`` of its image), and with ``--psnr`` the mean PSNR
and process CPU time of reconstructing those images with ``reference`` (fp32), ``auto`` with
``precision="fp32"`` and ``auto`` with ``precision="bf16"`` (the file's solver defaults,
batch 256, seed 0, one thread).

    OMP_NUM_THREADS=1 python bench/sensing_bf16.py --data mnist models/mnist-m25-1bit.qgen
    OMP_NUM_THREADS=1 python bench/sensing_bf16.py --data cifar10 --psnr cifar-1bit.qgen
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="FILE.qgen")
    p.add_argument("--data", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--data-root", type=Path, default=None,
                   help="default: ../shared/data/<data> beside the repository")
    p.add_argument("--psnr", action="store_true",
                   help="also reconstruct the images (reference fp32, auto fp32, auto bf16)")
    args = p.parse_args(argv)

    import torch

    import qgen_infer
    from qgen_infer.data import load_images, split_train_eval
    from qgen_infer.metrics import psnr
    from qgen_infer.reconstruction import solver_options

    torch.set_num_threads(1)
    root = args.data_root or REPO.parent / "shared" / "data" / args.data
    _, evals = split_train_eval(load_images(args.data, root), 1000)
    truth = evals[:1000]
    for path in args.models:
        ref = qgen_infer.load(path, backend="reference")
        with torch.no_grad():
            exact = ref.sensing(truth)
            rounded = copy.deepcopy(ref.sensing).to(torch.bfloat16)(truth.bfloat16()).float()
        diff = rounded - exact
        per_image = diff.norm(dim=1) / exact.norm(dim=1)
        worst = (diff.abs() / exact.abs().amax(dim=1, keepdim=True)).max()
        print(f"{path}: {truth.shape[0]} {args.data} eval images; bf16 sensing net vs fp32: "
              f"relative error per image mean {per_image.mean():.2e}, max {per_image.max():.2e};"
              f" max |diff| / max |A(x)| {worst:.2e}", flush=True)
        if not args.psnr:
            continue
        auto = qgen_infer.load(path, backend="auto")
        y = exact.numpy()
        for name, model, precision in (("reference fp32", ref, "fp32"),
                                       ("auto fp32", auto, "fp32"), ("auto bf16", auto, "bf16")):
            opts = solver_options(model, batch_size=256, seed=0)
            t0 = time.process_time()
            rec = qgen_infer.reconstruct(model, y, opts, precision=precision)
            secs = time.process_time() - t0
            print(f"  {name:<14} PSNR {float(psnr(truth, torch.from_numpy(rec.x_hat)).mean()):.4f}"
                  f" dB, {secs:.1f} s CPU (first call, one-off costs included)", flush=True)


if __name__ == "__main__":
    main()
