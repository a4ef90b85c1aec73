"""``qgen-eval``: reconstruct a data set's eval split with a checkpoint and print PSNR/SSIM."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence

from qgen_infer.cli.common import (
    DATASET_NAMES,
    ArgumentParser,
    check_data_flags,
    float_in,
    int_in,
    run_cli,
)
from qgen_infer.errors import QgenError
from qgen_infer.limits import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_RESTARTS,
    MAX_STEP_SIZE,
    MAX_STEPS,
    max_threads,
)

DESCRIPTION = """\
Measure the eval split with the checkpoint's sensing network A, reconstruct every image by latent
proximal gradient descent through the checkpoint's generator (its weights fake-quantized to the
trained bit width, exactly as in training) and print the mean PSNR (peak 1) and SSIM.
The data set defaults to the one the model was trained on (recorded in the checkpoint).
A 32-bit checkpoint is scored here; a 1-4-bit one is also scored through the packed engine by
qgen-export, qgen-measure and qgen-reconstruct.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-eval", description=DESCRIPTION)
    p.add_input("model", metavar="MODEL.pt", help="training checkpoint written by qgen-train")
    p.add_argument("--data", dest="dataset", choices=DATASET_NAMES, default=None,
                   help="data set (default: the checkpoint's)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder holding the data set's files (default: the checkpoint's)")
    p.add_argument("--eval-size", type=int_in(1, MAX_COUNT), default=None,
                   help="images held out for evaluation, as in qgen-train (default: the "
                        "checkpoint's split)")
    p.add_argument("--count", type=int_in(1, MAX_COUNT), default=None,
                   help="score only the first COUNT held-out images (default: all)")
    p.add_argument("-T", "--steps", type=int_in(1, MAX_STEPS), default=None,
                   help="latent steps (default: as trained)")
    p.add_argument("--step-size", type=float_in(0, MAX_STEP_SIZE, low_open=True), default=None,
                   help="latent step size (default: the learned one)")
    p.add_argument("-s", "--sparsity", type=int_in(1, 1 << 20), default=None,
                   help="latent non-zeros (default: as trained)")
    p.add_argument("--restarts", type=int_in(1, MAX_RESTARTS), default=1,
                   help="random restarts per image; the one with the lowest measurement loss "
                        "is kept")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=250,
                   help="images solved together: speed and memory, not the result")
    p.add_argument("--seed", type=int_in(0, 2**62), default=1234, help="seed of the random starts")
    p.add_argument("--threads", type=int_in(1, max_threads()), default=None,
                   help="torch CPU threads (default: the cores other processes leave idle, "
                   "re-checked after every batch, and from a minute on now and then one "
                   "batch with a thread more, kept if the other work yields)")
    p.add_argument("-o", "--out", dest="json", metavar="FILE.json", default=None,
                   help="also write the results to this JSON file (with the settings, the "
                        "thread counts the batches ran with, and every image's PSNR and SSIM)")
    p.rename("--json", "--out")
    return p


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    import torch

    from qgen_infer.allocator import keep_freed_memory
    from qgen_infer.arrays import write_text_atomic
    from qgen_infer.cpu_threads import PROBE_EVERY_S, idle_core_monitor
    from qgen_infer.data import load_train_eval
    from qgen_infer.engine.memory import check_fits, network_plan
    from qgen_infer.train import SolverSettings, evaluate_reconstruction
    from qgen_infer.train.trainer import models_from_checkpoint_path

    # without --threads: the cores other processes leave idle, measured over the loading and
    # re-checked after every batch; a thread more is probed as in qgen-reconstruct
    monitor = idle_core_monitor(args.threads, "cpu", probe_every_s=PROBE_EVERY_S,
                                probe_at_start=False)
    if args.count is not None and args.count < 1:
        raise QgenError("--count must be at least 1")
    if args.restarts < 1:
        raise QgenError("--restarts must be at least 1")
    keep_freed_memory()  # as qgen_infer.load does: the solver's activations are reused
    gen, sense, ckpt = models_from_checkpoint_path(args.model)
    settings = ckpt["train"].get("settings", {})
    dataset = args.dataset if args.dataset is not None else settings.get("dataset")
    root = args.data_root if args.data_root is not None else settings.get("data_root")
    check_data_flags(dataset, root)
    _, evals = load_train_eval(dataset, root, args.eval_size or settings.get("eval_size"))
    evals = evals[:args.count]
    if list(evals.shape[1:]) != list(ckpt["config"]["image_shape"]):
        raise QgenError(f"the data's images are {list(evals.shape[1:])} but the model makes "
                        f"{ckpt['config']['image_shape']}")
    sv = ckpt["solver"]
    latent_dim = sv.get("latent_dim", ckpt["config"]["latent_dim"])  # schema-checked equal
    solver = SolverSettings(sv["method"], latent_dim,
                            args.sparsity if args.sparsity is not None else sv["sparsity"],
                            args.steps if args.steps is not None else int(sv["steps"]),
                            bool(sv["project"]))
    if solver.sparsity is not None and not 1 <= solver.sparsity <= solver.latent_dim:
        raise QgenError(f"--sparsity must be between 1 and {solver.latent_dim}")
    step = args.step_size if args.step_size is not None else float(ckpt["log_step_size"].exp())
    rows = min(args.batch_size, evals.shape[0]) * args.restarts
    check_fits(network_plan(ckpt["config"]).need(rows), torch.device("cpu"),
               f"a batch of {rows} latent rows (images x restarts)",
               "use a smaller --batch-size or fewer --restarts")
    if monitor is not None:
        monitor.follow()
    res = evaluate_reconstruction(gen, sense, evals, solver, step, batch_size=args.batch_size,
                                  restarts=args.restarts, seed=args.seed,
                                  on_batch=None if monitor is None else monitor.follow)
    threads_used = monitor.used if monitor is not None else [torch.get_num_threads()]
    if not all(math.isfinite(res[k]) for k in ("psnr", "ssim")):
        raise QgenError(f"the reconstructions are not finite (PSNR {res['psnr']}, SSIM "
                        f"{res['ssim']}): the step size {step:g} or the weights overflow float32")
    bits = ckpt["config"]["bits"]
    out = {"model": args.model, "bits": bits, "method": sv["method"],
           "epochs": ckpt["train"].get("epochs"), "images": int(evals.shape[0]),
           "steps": solver.steps, "sparsity": solver.sparsity, "restarts": args.restarts,
           "step_size": step, "threads": args.threads, "threads_used": threads_used,
           "psnr": res["psnr"], "ssim": res["ssim"],
           # as in qgen-reconstruct's metrics.json: two models' scores on the same images can
           # then be compared image by image (a paired difference)
           "per_image": [{"measurement_loss": float(loss), "psnr": float(p), "ssim": float(s)}
                         for loss, p, s in zip(res["loss_per_image"].tolist(),
                                               res["psnr_per_image"].tolist(),
                                               res["ssim_per_image"].tolist(), strict=True)]}
    print(f"{args.model}: {sv['method']} {bits}-bit, {out['epochs']} epochs, {out['images']} "
          f"images, T={solver.steps}, s={solver.sparsity}, restarts={args.restarts}: "
          f"PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.4f}")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-eval", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
