"""``qgen-train``: train a quantized generator and a sensing network (Algorithm 1 of Q-GEN)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgen_infer.cli.common import (
    DATASET_NAMES,
    EXIT_INTERRUPTED,
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
    MAX_EPOCHS,
    MAX_LATENT,
    MAX_LOSS_WEIGHT,
    MAX_RESTARTS,
    MAX_STEPS,
    max_threads,
)
from qgen_infer.train.config import METHODS, RESUME_LOCAL, RESUME_MAY_CHANGE, TrainConfig

if TYPE_CHECKING:  # the module imports torch, which --help does not wait for
    from qgen_infer.cpu_threads import IdleCoreMonitor

DESCRIPTION = """\
Train a quantized generative prior G (weights quantized to 1-4 bits with LinearQuantize and a
straight-through estimator; 32 = full precision), a learned nonlinear sensing network A and the
latent step size jointly, by meta-learning (Algorithm 1 of Q-GEN): for each batch, T unrolled
proximal-gradient steps z <- P_s(z - beta grad ||y - A(G(z))||^2) from a random sparse latent, then
Adam on the measurement + S-REC isometry + gradient-difference losses.

The run folder DIR gets model.pt (checkpointed every epoch; --resume continues), log.jsonl (losses,
eval PSNR/SSIM and steps/s per epoch) and config.json.
"""

EPILOG = """\
examples:
  qgen-train --out-dir runs/demo --epochs 5                  # embedded digits, 32-bit SDLSS
  qgen-train --data mnist --data-root ../shared/data/mnist --bits 1 --out-dir runs/mnist-1bit
  qgen-train --data mnist --data-root DIR --method dcs --out-dir runs/mnist-dcs
  qgen-train --data cifar10 --data-root ../shared/data/cifar10 -m 100 --out-dir runs/cifar-32bit
  qgen-train --out-dir runs/mnist-1bit --resume              # continue an interrupted run
Under torchrun, DistributedDataParallel: --batch-size is the global batch (BatchNorm statistics
and S-REC data pairs over all of it, as one process); Ctrl-C keeps the last epoch's checkpoint:
  torchrun --nproc_per_node=2 $(which qgen-train) --threads 1 --batch-size 64 --out-dir runs/ddp
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-train", description=DESCRIPTION, epilog=EPILOG)
    d = TrainConfig()
    p.add_argument("-o", "--out-dir", dest="out", metavar="DIR", required=True,
                   help="run folder (created; model.pt, log.jsonl, config.json)")
    p.rename("--out", "--out-dir")
    p.add_argument("--data", dest="dataset", choices=DATASET_NAMES, default=None,
                   help="data set (default: the embedded 'digits' set shipped with scikit-learn)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder (or file) holding the data set's files; for cifar10 the binary "
                        "release or the JPEG copy's zip (decoded in memory, never extracted)")
    p.add_argument("--eval-size", type=int_in(1, MAX_COUNT), default=None,
                   help="images held out for evaluation (default per data set; MNIST: the last "
                        "1,000 of the 10,000-image test split; CIFAR-10's JPEG copy "
                        "(cifar10-jpeg-27k.zip): trains on train/ and evaluates on the first "
                        "1,000 of test/ in sorted-path order; elsewhere the last 10%%)")
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help="sdlss: sparse latent with hard thresholding; dcs: dense latent baseline")
    p.add_argument("--bits", type=int, choices=(1, 2, 3, 4, 32), default=d.bits,
                   help="generator weight bits (32 = full precision)")
    p.add_argument("--granularity", choices=("tensor", "channel"), default=d.granularity,
                   help="one quantization scale per weight tensor (the paper) or per output "
                        "channel")
    p.add_argument("--overflow-rate", type=float, default=d.overflow_rate,
                   help="2-4 bits: fraction of the largest weights that LinearQuantize clips "
                        "(Hubara et al.'s overflow rate); 0 sets the range to max|w|, which at "
                        "2 bits rounds most weights to zero")
    p.add_argument("--grid", choices=("mid-tread", "mid-rise"), default=d.grid,
                   help="2-4 bits: LinearQuantize's levels. mid-tread (the paper's) has a level "
                        "at zero but at 2 bits only one positive level (-R, -R/2, 0, R/2); "
                        "mid-rise splits [-R, R] into equal cells and takes their centres, "
                        "symmetric (+-R/4, +-3R/4); see docs/QUANTIZATION.md")
    p.add_argument("-m", "--measurements", type=int, default=d.measurements,
                   help="number of measurements m (output size of A)")
    p.add_argument("-s", "--sparsity", type=int_in(1, MAX_LATENT), default=None,
                   help="non-zeros kept in the latent (default 100 for SDLSS; none for DCS)")
    p.add_argument("--latent-dim", type=int_in(1, MAX_LATENT), default=None,
                   help="latent size (default: image size for SDLSS on MLPs, 512 on DCGAN, "
                        "100 for DCS)")
    p.add_argument("-T", "--steps", type=int_in(1, MAX_STEPS), default=d.steps,
                   help="unrolled latent steps")
    p.add_argument("--project", action=argparse.BooleanOptionalAction, default=d.project,
                   help="project the latent to the unit sphere after each step")
    p.add_argument("--epochs", type=int_in(0, MAX_EPOCHS), default=d.epochs,
                   help="passes over the training images (MNIST's 9,000 took 13-36 s per epoch "
                        "on one thread of a busy 2-vCPU machine: the default 100 is 20-60 min)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=d.batch_size,
                   help="training images per Adam step (under torchrun: the global batch, "
                        "split evenly across the processes)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: 1e-3 for the MLP networks, 2e-4 for the "
                        "DCGAN ones)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule,
                   help="cosine: decay the rate to lr/10 over the epochs")
    p.add_argument("--step-size-lr", type=float, default=None,
                   help="Adam learning rate of the learned latent step size beta (in log space; "
                        "default: 1e-2 for the DCGAN networks, --lr for the MLP ones). Per Adam "
                        "step log(beta) moves by about this much, so a small rate keeps beta near "
                        "--initial-step-size for thousands of steps")
    p.add_argument("--sensing-loss", choices=("total", "srec"), default=d.sensing_loss,
                   help="what trains the sensing network A: total = the whole loss (measurement "
                        "+ S-REC + GDL), as Deep Compressed Sensing's code does; srec = the S-REC "
                        "loss alone, as the paper's Algorithm 1 writes it (one more backward pass "
                        "per step)")
    p.add_argument("--srec-data-pairs", action=argparse.BooleanOptionalAction, default=None,
                   help="add pairs of data images to the S-REC loss, besides DCS's three pairs "
                        "among data, reconstructed and generated images, so that A also keeps "
                        "data images apart (not in the paper or DCS; default: on for the DCGAN "
                        "networks, where it trained better, off for the MLP ones)")
    p.add_argument("--gdl-weight", type=float_in(0, MAX_LOSS_WEIGHT), default=d.gdl_weight,
                   help="weight of the gradient-difference loss (0 disables it)")
    p.add_argument("--initial-step-size", type=float, default=d.initial_step_size,
                   help="latent step size beta to start from (learned from there, in log space)")
    p.add_argument("--seed", type=int_in(0, 2**62), default=d.seed,
                   help="seed of the initial weights, the batch order and the latent starts")
    p.add_argument("--threads", type=int_in(1, max_threads()), default=None,
                   help="torch CPU threads (default on the CPU: the cores other processes "
                   "leave idle, re-checked as training goes; under torchrun its 1 per rank)")
    p.add_argument("--device", default=d.device,
                   help="where to train: cpu, cuda (or cuda:N), or auto (cuda when a CUDA GPU "
                        "is visible, else cpu). Checkpoints are saved with CPU tensors, so a "
                        "model trained on a GPU exports and resumes anywhere")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=d.precision,
                   help="what the generator and sensing network compute in while training: fp32, "
                        "or bf16 (autocast; master weights, optimizer, latent and losses stay "
                        "fp32): several times faster convolutions on CPUs with AMX/AVX-512 BF16, "
                        "slightly different numbers. Evaluation and export are fp32 either way")
    p.add_argument("--init-from", default=None,
                   help="warm start from another checkpoint of the same network (e.g. a 32-bit "
                        "model before 1-bit training)")
    p.add_argument("--keep-epochs", type=epoch_list, default=d.keep_epochs, metavar="E[,E...]",
                   help="also keep the checkpoint of these epochs as OUT/model-epochE.pt "
                        "(model.pt is overwritten every epoch), e.g. the state quantized runs "
                        "fine-tune from (--init-from) while this run goes on")
    p.add_argument("--eval-restarts", type=int_in(1, MAX_RESTARTS), default=d.eval_restarts,
                   help="random restarts per image in the per-epoch evaluation")
    # the options a resumed run may change, named from the one rule (train/config.py)
    flags = {a.dest: a.option_strings[-1] for a in p._actions if a.option_strings}
    may_change = [flags[d] for d in sorted(RESUME_MAY_CHANGE - {"out"}) if d in flags]
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its last checkpoint, with the "
                        "settings it was trained with (options left out are taken from the "
                        f"checkpoint; {', '.join(may_change)} may change, any other option "
                        "that differs is refused)")
    return p


def epoch_list(text: str) -> tuple[int, ...]:
    """``--keep-epochs``: "4,8" -> (4, 8); argparse turns the ValueError into a usage error."""
    try:
        epochs = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 4,8, got {text!r}") from None
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"epochs are counted from 1, got {text!r}")
    return epochs


def given_options(argv: Sequence[str] | None) -> set[str]:
    """The destinations of the options the command line sets (the rest are defaults)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _settings_to_resume(out: str, given: set[str]) -> dict[str, object]:
    """The run's settings from ``OUT/model.pt`` for the options the command line leaves out;
    the trainer then refuses any given one that differs."""
    from qgen_infer.checkpoint import load_checkpoint
    from qgen_infer.train.trainer import saved_settings

    path = Path(out) / "model.pt"
    if not path.is_file():
        raise QgenError(f"--resume: {path} does not exist; drop --resume to start a new run there")
    return {k: v for k, v in saved_settings(load_checkpoint(path)).items()
            if k not in given | RESUME_LOCAL}


def resolve_device(name: str) -> str:
    """``--device``: "auto" -> "cuda" or "cpu"; a CUDA device that is not there is a user error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise QgenError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QgenError(f"--device {name}: no CUDA GPU is visible to torch here "
                            f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise QgenError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise QgenError(f"--device {name!r}: training runs on cpu or cuda")
    return str(dev)


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    import torch

    from qgen_infer.cpu_threads import PROBE_EVERY_S, STEP_WINDOW_S, idle_core_monitor
    from qgen_infer.data import load_train_eval
    from qgen_infer.distributed import JobFailed, launched
    from qgen_infer.train import Trainer

    if args.epochs < 1:
        raise QgenError("--epochs must be at least 1")
    if args.batch_size < 1:
        raise QgenError("--batch-size must be at least 1")
    args.device = resolve_device(args.device)
    monitor = None
    if launched():  # torchrun's ranks keep its OMP_NUM_THREADS (1) or the user's --threads
        if args.threads:
            torch.set_num_threads(args.threads)
    else:  # without --threads on the CPU: the idle cores, re-checked as the steps go
        monitor = idle_core_monitor(args.threads, args.device, STEP_WINDOW_S, PROBE_EVERY_S)
    names = {f.name for f in fields(TrainConfig)}
    options = {k: v for k, v in vars(args).items() if k in names}
    if args.resume:
        options.update(_settings_to_resume(args.out, given_options(argv) & names))
    cfg = TrainConfig(**options)
    check_data_flags(cfg.dataset, cfg.data_root)
    train, evals = load_train_eval(cfg.dataset, cfg.data_root, cfg.eval_size)
    desc = (f"{cfg.dataset or 'digits (embedded)'}: {train.shape[0]} train / {evals.shape[0]} "
            f"eval images of {list(train.shape[1:])}")
    trainer_type = Trainer
    if launched():  # under torchrun: DistributedDataParallel, --batch-size split across ranks
        from qgen_infer.distributed.training import DistributedTrainer as trainer_type
        from qgen_infer.signals import stop_signals

        stop_signals()  # Ctrl-C and torchrun's SIGTERM: one clean stop (_stopped)
    try:
        trainer = trainer_type(cfg, train, evals, resume=args.resume, data_description=desc)
    except JobFailed as exc:  # raised on every rank; rank 0 says it
        if exc.report_here:
            print(f"qgen-train: error: {exc}", file=sys.stderr)
        return _end(exc.exit_code)
    except KeyboardInterrupt as exc:
        return _stopped(exc, None, cfg.out)
    try:
        return _train(trainer, cfg, desc, monitor)
    except KeyboardInterrupt as exc:
        return _stopped(exc, trainer, cfg.out)


def _train(trainer: Any, cfg: TrainConfig, desc: str, monitor: IdleCoreMonitor | None) -> int:
    import tqdm

    from qgen_infer.distributed import launched

    if not trainer.writes_files:  # a torchrun rank other than 0: rank 0 reports
        trainer.run()
        return _end(0)
    s = trainer.solver
    print(f"qgen-train: {desc}; {cfg.method} at {cfg.bits} bits, m={cfg.measurements}, "
          f"latent {s.latent_dim}, s={s.sparsity}, T={s.steps}; epochs {trainer.epoch + 1}.."
          f"{cfg.epochs} on {trainer.device}, Adam lr {trainer.cfg.lr:g} -> {cfg.out}/model.pt"
          + (f" ({trainer.env.world_size} processes)" if launched() else ""))
    on_step = None
    if monitor is not None:  # measured over the data and model set-up; then every step
        monitor.follow()
        on_step = monitor.follow
    rec = trainer.run(progress=tqdm.tqdm, on_step=on_step)
    if rec:
        print(f"qgen-train: done after {rec['epoch']} epochs ({rec['wall_time_s']:.0f} s): eval "
              f"PSNR {rec['eval_psnr']:.2f} dB, SSIM {rec['eval_ssim']:.4f}")
    else:
        print(f"qgen-train: {cfg.out}/model.pt already has {trainer.epoch} epochs; nothing to do "
              f"(raise --epochs to train further)")
    return _end(0)


def _stopped(exc: KeyboardInterrupt, trainer: Any, out: str) -> int:
    """Ctrl-C or SIGTERM: under torchrun, rank 0 says once what is kept (the checkpoint of the
    last finished epoch, written whole) and every rank leaves with 130; else run_cli's line."""
    from qgen_infer.distributed import launched

    if not launched():
        raise exc
    from qgen_infer.distributed.env import exit_process, leave
    from qgen_infer.signals import Stopped, stop_signals

    stop_signals(ignore=True)
    if (trainer.writes_files if trainer is not None else os.environ.get("RANK") == "0"):
        how = exc.signal_name if isinstance(exc, Stopped) else "SIGINT"
        epochs = getattr(trainer, "epoch", 0)
        kept = (f"{out}/model.pt holds epoch {epochs}: rerun with --resume to continue"
                if epochs else "no epoch finished, nothing saved")
        print(f"qgen-train: stopped by {how}; {kept}", file=sys.stderr)
    leave(wait=False)
    exit_process(EXIT_INTERRUPTED)


def _end(code: int) -> int:
    """``code``; under torchrun the process ends here, after the others (env.exit_process)."""
    from qgen_infer.distributed import launched

    if launched():
        from qgen_infer.distributed.env import exit_process, leave

        leave()
        exit_process(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from qgen_infer.signals import sigterm_stops

    # kill -TERM (a batch scheduler, the paper queues' stop) takes Ctrl-C's path: the last
    # finished epoch's checkpoint stays, and "interrupted" is said
    with sigterm_stops():
        return run_cli("qgen-train", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
