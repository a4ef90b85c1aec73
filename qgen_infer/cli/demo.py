"""``qgen-demo``: the whole pipeline on the embedded digits, once per bit width, in a few minutes.

train (Algorithm 1) -> checkpoint -> export to a packed .qgen -> load on the fastest backend ->
measure the held-out images -> reconstruct through the packed generator -> PSNR/SSIM table + PNGs.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from qgen_infer.cli.common import ArgumentParser, int_in, run_cli
from qgen_infer.errors import QgenError
from qgen_infer.limits import MAX_BATCH, MAX_EPOCHS, MAX_LATENT, MAX_RESTARTS, max_threads

DESCRIPTION = """\
Run the full qgen-infer pipeline on the embedded default data (scikit-learn's 8x8 handwritten
digits, upsampled to 16x16; 1,500 train / 297 eval images): for each bit width, train a generator
and sensing network with Algorithm 1, export the quantized generator to a bit-packed .qgen file,
load it on the packed engine (C++ kernels when built, else the reference backend), reconstruct
the eval images from m measurements and print PSNR/SSIM per bit width. The 32-bit model is
evaluated with the training code (there is nothing to pack). Outputs go to --out-dir.
The default run took 3 min 56 s on the 2-core development machine (2026-11-25; see the README).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-demo", description=DESCRIPTION)
    p.add_argument("-o", "--out-dir", dest="out", metavar="DIR", default="runs/demo",
                   help="folder for models, files and PNG grids (a rerun reuses its models)")
    p.rename("--out", "--out-dir")
    p.add_argument("--bits", type=int, nargs="+", default=[32, 4, 2, 1],
                   choices=(1, 2, 3, 4, 32), help="bit widths to run")
    p.add_argument("--epochs", type=int_in(1, MAX_EPOCHS), default=30,
                   help="training epochs per model")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=32,
                   help="training batch (small: more Adam steps on the small data set)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("-m", "--measurements", type=int, default=25,
                   help="number of measurements m per image")
    p.add_argument("-s", "--sparsity", type=int_in(1, MAX_LATENT), default=50,
                   help="non-zeros kept in the latent")
    p.add_argument("--backend", choices=("auto", "reference", "cpu", "triton"), default="auto",
                   help="engine backend of the reconstructions (auto: the C++ cpu kernels when "
                        "built, else reference)")
    p.add_argument("--restarts", type=int_in(1, MAX_RESTARTS), default=2,
                   help="reconstruction restarts per image")
    p.add_argument("--seed", type=int_in(0, 2**62), default=0,
                   help="seed of the training and of the reconstructions' random starts")
    p.add_argument("--threads", type=int_in(1, max_threads()), default=None,
                   help="torch CPU threads (default: the cores other processes leave idle, "
                   "re-checked as training goes)")
    return p


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    import torch
    import tqdm

    from qgen_infer import load, measure, psnr, reconstruct, ssim
    from qgen_infer.cpu_threads import PROBE_EVERY_S, STEP_WINDOW_S, idle_core_monitor
    from qgen_infer.data import load_images, split_train_eval
    from qgen_infer.export import export_checkpoint
    from qgen_infer.train import TrainConfig, Trainer
    from qgen_infer.visual import save_grid

    if args.epochs < 1:
        raise QgenError("--epochs must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise QgenError(f"--threads must be at least 1, got {args.threads}")
    # without --threads: the cores other processes leave idle, re-checked as the steps go
    monitor = idle_core_monitor(args.threads, TrainConfig.device, STEP_WINDOW_S, PROBE_EVERY_S)
    follow = monitor.follow if monitor is not None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = load_images("digits")
    train, evals = split_train_eval(images, 297)
    rows = []
    for bits in args.bits:
        run = out / f"digits-{bits}bit"
        cfg = TrainConfig(out=str(run), dataset="digits", bits=bits, epochs=args.epochs,
                          measurements=args.measurements, sparsity=args.sparsity,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          eval_every=args.epochs)
        resume = (run / "model.pt").is_file()
        trainer = Trainer(cfg, train, evals, resume=resume,
                          data_description="digits (embedded)")
        t0 = time.perf_counter()
        if follow is not None:
            follow()
        trainer.run(progress=tqdm.tqdm, on_step=follow)
        train_s = time.perf_counter() - t0
        ev = trainer.evaluate()
        row = {"bits": bits, "epochs": trainer.epoch, "train_s": train_s,
               "train_psnr": ev["psnr"], "train_ssim": ev["ssim"]}
        if bits < 32:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exp = export_checkpoint(run / "model.pt", out / f"digits-{bits}bit.qgen")
            model = load(exp.path, backend=args.backend)
            y = measure(model, evals)
            res = reconstruct(model, y, restarts=args.restarts, seed=args.seed,
                              on_batch=None if follow is None else lambda _r, _n: follow())
            x_hat = torch.from_numpy(res.x_hat)
            row.update(file_bytes=exp.file_bytes, packed_bytes=exp.packed_bytes,
                       fp32_bytes=4 * exp.weight_count, backend=model.backend.name,
                       psnr=float(psnr(evals, x_hat).mean()), ssim=float(ssim(evals, x_hat).mean()),
                       recon_s=res.seconds)
            save_grid(out / f"grid-{bits}bit.png", [evals.numpy(), res.x_hat],
                      labels=["truth", f"{bits}-bit"], count=48)
        rows.append(row)
    print()
    print(f"qgen-demo on embedded digits ({train.shape[0]} train / {evals.shape[0]} eval, "
          f"16x16, m = {args.measurements}, s = {args.sparsity}, {args.epochs} epochs):")
    print("| bits | weights packed | vs fp32 | PSNR train-code (dB) | PSNR packed engine (dB) "
          "| SSIM packed | backend | recon s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["bits"] == 32:
            print(f"| 32 | - | 1x | {r['train_psnr']:.2f} | - | - | - | - |")
        else:
            print(f"| {r['bits']} | {r['packed_bytes']:,} B | "
                  f"{r['fp32_bytes'] / r['packed_bytes']:.1f}x | {r['train_psnr']:.2f} | "
                  f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['backend']} | {r['recon_s']:.2f} |")
    print(f"\nPNG grids (truth | reconstruction) and .qgen files in {out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-demo", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
