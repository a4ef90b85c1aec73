"""The qgen-* command lines of each step of a run, and where each step writes.

Pure functions of the run spec, so ``--dry-run`` prints exactly what a real run executes. Training
writes only the run folder ``RUNS/NAME`` (as ``paper/train_mnist_m25.sh`` does); everything the
evaluation makes goes to ``RUNS/eval/NAME`` so a run folder that another queue is filling is only
ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paper_repro.plan import SDLSS, RunSpec


@dataclass(frozen=True)
class RunPaths:
    """Where one run's files live."""

    run_dir: Path  # qgen-train --out: model.pt, log.jsonl, config.json
    train_log: Path  # qgen-train's console output (next to the folder, as the m25 queue does)
    eval_dir: Path  # everything the evaluation writes

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "model.pt"

    @property
    def qgen(self) -> Path:
        return self.eval_dir / "model.qgen"

    @property
    def measurements(self) -> Path:
        return self.eval_dir / "y.npy"

    @property
    def truth(self) -> Path:
        return self.eval_dir / "x.npy"

    @property
    def recon_dir(self) -> Path:
        return self.eval_dir / "recon"

    @property
    def qgen_eval_json(self) -> Path:
        return self.eval_dir / "qgen-eval.json"

    @property
    def record(self) -> Path:
        return self.eval_dir / "eval.json"

    @property
    def fp32_images(self) -> Path:
        return self.eval_dir / "figure4.npz"


def paths_for(runs: Path, spec: RunSpec) -> RunPaths:
    return RunPaths(runs / spec.name, runs / f"{spec.name}.log", runs / "eval" / spec.name)


def init_checkpoint(spec: RunSpec, paths: RunPaths) -> Path:
    """The checkpoint a fine-tuning run starts from: its source run's kept epoch, in the same
    runs folder (``qgen-train --keep-epochs`` of the source writes it)."""
    from qgen_infer.train.config import kept_checkpoint_name

    assert spec.init_from is not None
    return paths.run_dir.parent / spec.init_from / kept_checkpoint_name(spec.init_epoch)


def _data_args(spec: RunSpec) -> list[str]:
    args = ["--data", spec.dataset]
    if spec.data_root is not None:
        args += ["--data-root", spec.data_root]
    return args


def train_command(spec: RunSpec, paths: RunPaths, *, threads: int, resume: bool,
                  device: str = "cpu") -> list[str]:
    """qgen-train for the spec; ``resume`` continues from the run folder's last checkpoint (on
    any device: checkpoints hold CPU tensors)."""
    cmd = ["qgen-train", "--out", str(paths.run_dir), *_data_args(spec), "--method", spec.method,
           "--bits", str(spec.bits), "-m", str(spec.m)]
    if spec.method == SDLSS and spec.s is not None:
        cmd += ["-s", str(spec.s)]
    if spec.overflow_rate:
        cmd += ["--overflow-rate", str(spec.overflow_rate)]
    if spec.lr is not None:
        cmd += ["--lr", repr(spec.lr)]
    if spec.srec_data_pairs is not None:
        cmd += ["--srec-data-pairs" if spec.srec_data_pairs else "--no-srec-data-pairs"]
    if spec.precision is not None:
        cmd += ["--precision", spec.precision]
    if spec.keep_epochs:
        cmd += ["--keep-epochs", ",".join(map(str, spec.keep_epochs))]
    if spec.init_from is not None and not resume:  # a resumed run has its own checkpoint
        cmd += ["--init-from", str(init_checkpoint(spec, paths))]
    cmd += ["--epochs", str(spec.epochs), "--threads", str(threads)]
    if device != "cpu":
        cmd += ["--device", device]
    return cmd + (["--resume"] if resume else [])


def export_command(paths: RunPaths) -> list[str]:
    """Pack the checkpoint at its trained width (bit-exact with training's fake quantization);
    ``--force``: a resumed run re-exports over its own earlier file."""
    return ["qgen-export", str(paths.checkpoint), "--out", str(paths.qgen), "--force"]


def measure_command(spec: RunSpec, paths: RunPaths) -> list[str]:
    """Measure the held-out images with the packed file's own sensing net."""
    return ["qgen-measure", "--model", str(paths.qgen), *_data_args(spec), "--split", "eval",
            "--out", str(paths.measurements), "--truth-out", str(paths.truth), "--force"]


def reconstruct_command(paths: RunPaths, *, threads: int, backend: str) -> list[str]:
    """Reconstruct through the packed generator; metrics.json carries PSNR/SSIM per image.
    fp32 pinned: the paper's tables compare widths (32-bit scored by qgen-eval in fp32) and
    machines, and the default ``auto`` rounds the sensing net to bf16 on AMX CPUs only."""
    return ["qgen-reconstruct", "--model", str(paths.qgen), "--measurements",
            str(paths.measurements), "--truth", str(paths.truth), "--out", str(paths.recon_dir),
            "--backend", backend, "--precision", "fp32", "--threads", str(threads), "--force",
            "--quiet"]


def fp32_eval_command(spec: RunSpec, paths: RunPaths, *, threads: int) -> list[str]:
    """qgen-eval on the checkpoint: the only scorer for a 32-bit model (it has no packed form)."""
    return ["qgen-eval", str(paths.checkpoint), *_data_args(spec), "--threads", str(threads),
            "--json", str(paths.qgen_eval_json)]


def eval_commands(spec: RunSpec, paths: RunPaths, *, threads: int,
                  backend: str) -> list[list[str]]:
    """The evaluation steps of the spec, in order."""
    if spec.packed:
        return [export_command(paths), measure_command(spec, paths),
                reconstruct_command(paths, threads=threads, backend=backend)]
    return [fp32_eval_command(spec, paths, threads=threads)]
