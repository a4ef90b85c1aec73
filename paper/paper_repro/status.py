"""What is on disk for a run: epochs trained (from log.jsonl) and whether some process is training
it right now (so the queue never starts a second writer on the same folder)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def log_records(run_dir: Path) -> Iterator[dict]:
    """The per-epoch records of ``run_dir``/log.jsonl, skipping a line cut short by a crash (the
    earlier records still count)."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def trained_epochs(run_dir: Path) -> int:
    """The last epoch that log.jsonl records (0 without a log). qgen-train appends the record
    after the checkpoint is saved, so model.pt holds at least this many epochs."""
    epoch = 0
    for record in log_records(run_dir):
        try:
            epoch = max(epoch, int(record.get("epoch", 0)))
        except (TypeError, ValueError):
            continue
    return epoch


def eval_curve(run_dir: Path, metric: str = "eval_psnr") -> dict[int, float]:
    """Epoch -> the training code's eval PSNR (or ``metric``: "eval_ssim") after it, as log.jsonl
    records it (a resumed run that repeated an epoch keeps its last record)."""
    curve = {}
    for record in log_records(run_dir):
        try:
            curve[int(record["epoch"])] = float(record[metric])
        except (KeyError, TypeError, ValueError):
            continue
    return curve


def epoch_record(run_dir: Path, epoch: int) -> dict | None:
    """The last log.jsonl record of ``epoch`` (steps, wall_time_s, eval scores), or None."""
    found = None
    for record in log_records(run_dir):
        if record.get("epoch") == epoch:
            found = record
    return found


def _processes(proc: Path) -> Iterator[tuple[int, list[str], Path]]:
    """``(pid, argv, working directory)`` of every process readable in ``proc`` (Linux /proc)."""
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace")
                    for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue  # exited meanwhile, or not ours to read
        yield int(entry.name), args, cwd


def training_processes(proc: Path = Path("/proc")) -> dict[Path, int]:
    """``{resolved --out folder: pid}`` of every live ``qgen-train`` process visible in /proc
    (Linux). Relative --out paths are resolved against the process's working directory."""
    found: dict[Path, int] = {}
    for pid, args, cwd in _processes(proc):
        if not any(Path(a).name == "qgen-train" or a.endswith("qgen_infer.cli.train")
                   for a in args[:3]):
            continue
        out = _option(args, "--out")
        if out is not None:
            found[(cwd / out).resolve()] = pid
    return found


# paper/train_mnist_m25.sh (the lead's queue) trains these folders one after another: while it is
# alive, the ones it has not reached yet must not be started here too (two writers, one folder).
M25_QUEUE_SCRIPT = "train_mnist_m25.sh"
M25_QUEUE_RUNS = ("mnist-m25-sdlss-32", "mnist-m25-dcs-32", "mnist-m100-sdlss-32",
                  "mnist-m25-sdlss-1", "mnist-m25-sdlss-4-ft", "mnist-m25-sdlss-1-ft",
                  "mnist-m25-sdlss-2-ft", "mnist-m25-sdlss-3-ft", "mnist-m25-sdlss-4",
                  "mnist-m100-sdlss-1")


def queue_reservations(proc: Path = Path("/proc")) -> dict[Path, int]:
    """``{run folder: pid}`` for every run of a live paper/train_mnist_m25.sh (its first argument
    is the runs folder, default "runs", relative to its working directory)."""
    found: dict[Path, int] = {}
    for pid, args, cwd in _processes(proc):
        pos = [i for i, a in enumerate(args) if Path(a).name == M25_QUEUE_SCRIPT]
        if not pos:
            continue
        runs = args[pos[0] + 1] if len(args) > pos[0] + 1 else "runs"
        for name in M25_QUEUE_RUNS:
            found.setdefault((cwd / runs / name).resolve(), pid)
    return found


def busy_folders() -> dict[Path, int]:
    """Run folders another process is (or is about to be) training: ``{folder: pid}``."""
    return {**queue_reservations(), **training_processes()}


def _option(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class RunState:
    """A run's training progress as found on disk."""

    epochs_done: int
    target: int
    busy_pid: int | None  # a live qgen-train writing it, or the m25 queue script that will

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.target

    def describe(self) -> str:
        if self.finished:
            return f"trained ({self.epochs_done} epochs)"
        where = f", owned by pid {self.busy_pid}" if self.busy_pid else ""
        if self.epochs_done:
            return f"partial ({self.epochs_done}/{self.target} epochs{where})"
        return f"not started{where}"


def run_state(run_dir: Path, target: int, busy: dict[Path, int] | None = None) -> RunState:
    busy = busy_folders() if busy is None else busy
    return RunState(trained_epochs(run_dir), target, busy.get(run_dir.resolve()))
