"""Running the queue: train what is unfinished, evaluate what is trained, in ``lanes`` parallel
workers, printing progress. Every step is a qgen-* command (see ``commands``); a run whose folder
another process is training is left alone."""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from paper_repro import commands as cmds
from paper_repro.plan import RunSpec, select
from paper_repro.records import FP32_EVAL, PACKED_ENGINE, EvalRecord, load_record, save_record
from paper_repro.status import RunState, busy_folders, run_state, trained_epochs
from qgen_infer.cli.common import EXIT_INTERRUPTED


@dataclass(frozen=True)
class QueueOptions:
    runs: Path
    threads: int = 1  # torch threads per run
    lanes: int = 1  # runs side by side
    backend: str = "auto"  # qgen-reconstruct --backend
    device: str = "cpu"  # qgen-train --device
    eval_partial: bool = False  # also score unfinished checkpoints (their epochs are stated)
    score_only: bool = False  # train nothing; score every trained checkpoint, finished or not
    poll_s: float = 20.0  # how often a lane looks at a training run's log.jsonl


class Progress:
    """Timestamped progress lines from several lanes, one line at a time."""

    def __init__(self, total: int, out: Callable[[str], None] = print) -> None:
        self.total, self.done, self._out, self._lock = total, 0, out, threading.Lock()

    def say(self, name: str, message: str) -> None:
        with self._lock:
            self._out(f"{time.strftime('%H:%M:%S')} [{self.done}/{self.total}] {name}: {message}")

    def finish(self, name: str, message: str) -> None:
        with self._lock:
            self.done += 1
        self.say(name, message)


def next_action(spec: RunSpec, state: RunState, record: EvalRecord | None,
                eval_partial: bool, score_only: bool = False) -> str:
    """What the queue does with a run: "done", "evaluate", "train", "busy" (another process is
    training it: neither trained nor, unless ``eval_partial``, evaluated here) or, with
    ``score_only``, "untrained" for a run with no epoch to score (nothing is trained then)."""
    fresh = record is not None and record.epochs == state.epochs_done
    if state.finished:
        return "done" if fresh else "evaluate"
    if state.busy_pid is not None:
        return "evaluate" if eval_partial and state.epochs_done and not fresh else "busy"
    if score_only:
        return "done" if fresh else "evaluate" if state.epochs_done else "untrained"
    return "train"


def describe_plan(specs: Sequence[RunSpec], opts: QueueOptions) -> list[str]:
    """The --dry-run listing: every run's state, next action and the command lines it implies."""
    busy = busy_folders()
    lines = []
    for i, spec in enumerate(specs, 1):
        paths = cmds.paths_for(opts.runs, spec)
        state = run_state(paths.run_dir, spec.epochs, busy)
        action = next_action(spec, state, load_record(paths.record), opts.eval_partial,
                             opts.score_only)
        lines.append(f"{i:3d}. tier {spec.tier}  {spec.name:28s} {state.describe()} -> {action}")
        if action == "train":
            resume = paths.checkpoint.is_file()
            lines.append("       " + shlex.join(cmds.train_command(
                spec, paths, threads=opts.threads, resume=resume, device=opts.device)))
        if action in ("train", "evaluate"):
            lines += ["       " + shlex.join(c) for c in cmds.eval_commands(
                spec, paths, threads=opts.threads, backend=opts.backend)]
    return lines


def _executable(name: str) -> str:
    """The qgen-* script next to this Python (the venv's) before any other on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


class StepFailed(RuntimeError):
    pass


class StepStopped(StepFailed):
    """The qgen-* process was stopped by a signal and exited with 130 (it keeps its last
    finished epoch): not a failure of the run, which the next queue resumes."""


# The qgen-* processes running now, so an interrupted queue can pass the stop on to them (they
# stop at once and keep their last per-epoch checkpoint) instead of leaving them running
# unwatched. SIGTERM, not SIGINT: a queue started in the background (paper/cifar_runs.sh) hands
# its children an ignored SIGINT, and qgen-train stops cleanly on SIGTERM.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


def interrupt_children() -> None:
    with _LIVE_LOCK:
        for proc in _LIVE:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def _run(cmd: list[str], log: Path, *, watch: Callable[[], None] | None = None,
         poll_s: float = 20.0) -> None:
    """Run ``cmd`` with its output appended to ``log``; ``watch`` is called every ``poll_s``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen([_executable(cmd[0]), *cmd[1:]], stdout=f,
                                stderr=subprocess.STDOUT)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if watch is not None:
                        watch()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    if rc == EXIT_INTERRUPTED:
        raise StepStopped(f"{cmd[0]} was stopped (exit {rc}); rerun the queue to resume")
    if rc != 0:
        raise StepFailed(f"{cmd[0]} exited with {rc}; see {log}")


def _wait_for_init(spec: RunSpec, paths: cmds.RunPaths, opts: QueueOptions,
                   progress: Progress) -> None:
    """Block until the checkpoint a fine-tuning run starts from exists; fail at once when no
    process is training its source run (it would never appear)."""
    init = cmds.init_checkpoint(spec, paths)
    said = False
    while not init.is_file():
        source = paths.run_dir.parent / str(spec.init_from)
        done = trained_epochs(source)
        if done >= spec.init_epoch:
            raise StepFailed(f"it starts from {init}, which does not exist: {spec.init_from} "
                             f"passed epoch {spec.init_epoch} without keeping it (it holds "
                             f"epoch {done}); fine-tune from an epoch it will still reach")
        if source.resolve() not in busy_folders():
            raise StepFailed(f"it starts from {init}, which does not exist, and nothing is "
                             f"training {spec.init_from}: train that run first (it keeps epoch "
                             f"{spec.init_epoch})")
        if not said:
            progress.say(spec.name, f"waiting for {spec.init_from} to reach epoch "
                                    f"{spec.init_epoch} (it starts from that checkpoint)")
            said = True
        time.sleep(opts.poll_s)


def _train(spec: RunSpec, paths: cmds.RunPaths, opts: QueueOptions, progress: Progress) -> None:
    start = trained_epochs(paths.run_dir)
    resume = paths.checkpoint.is_file()
    if spec.init_from is not None and not resume:
        _wait_for_init(spec, paths, opts, progress)
    cmd = cmds.train_command(spec, paths, threads=opts.threads, resume=resume,
                             device=opts.device)
    progress.say(spec.name, f"{'resuming at' if resume else 'training from'} epoch "
                            f"{start}/{spec.epochs} (log: {paths.train_log})")
    seen = [start]

    def watch() -> None:
        e = trained_epochs(paths.run_dir)
        if e != seen[0]:
            seen[0] = e
            progress.say(spec.name, f"epoch {e}/{spec.epochs}")

    _run(cmd, paths.train_log, watch=watch, poll_s=opts.poll_s)


def backend_name(metrics: dict) -> str:
    """qgen-reconstruct's backend as the tables name it: "cpu, avx512" names the C++ kernels'
    ISA tier (metrics.json's dispatch record), ", precision bf16" the activations' when it was
    not fp32 (``--precision auto`` runs the sensing net in bf16 on AMX CPUs)."""
    parts = [str(metrics["backend"])]
    isa = (metrics.get("dispatch") or {}).get("isa")
    precision = (metrics.get("settings") or {}).get("precision", "fp32")
    parts += [isa] if isa else []
    parts += [f"precision {precision}"] if precision != "fp32" else []
    return ", ".join(parts)


def _per_image_psnr(per_image: Sequence[dict[str, float]] | None) -> list[float] | None:
    """The images' PSNRs from qgen-reconstruct's metrics.json or qgen-eval's JSON (None from a
    qgen-eval older than its ``per_image``); 1e-4 dB is far below any difference reported."""
    return None if per_image is None else [round(float(r["psnr"]), 4) for r in per_image]


def _evaluate(spec: RunSpec, paths: cmds.RunPaths, opts: QueueOptions) -> EvalRecord:
    import json

    from paper_repro.recon_images import fp32_images, save_images
    from paper_repro.sizes import checkpoint_size, packed_size

    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    steps = cmds.eval_commands(spec, paths, threads=opts.threads, backend=opts.backend)
    for cmd in steps:
        _run(cmd, paths.eval_dir / "steps.log", poll_s=opts.poll_s)
    if spec.packed:
        from qgen_infer.format import read_qgen

        metrics = json.loads((paths.recon_dir / "metrics.json").read_text())
        size = packed_size(paths.qgen)
        epochs = int(read_qgen(paths.qgen).training.get("epochs", 0))
        return EvalRecord.for_spec(
            spec, epochs=epochs, psnr=metrics["summary"]["psnr"],
            ssim=metrics["summary"]["ssim"], images=metrics["summary"]["images"],
            engine=PACKED_ENGINE, backend=backend_name(metrics), stored_bytes=size.stored_bytes,
            fp32_bytes=size.fp32_bytes, file_bytes=size.file_bytes, commands=steps,
            psnr_per_image=_per_image_psnr(metrics["per_image"]))
    res = json.loads(paths.qgen_eval_json.read_text())
    save_images(paths.fp32_images, fp32_images(spec, paths))
    size = checkpoint_size(paths.checkpoint)
    return EvalRecord.for_spec(
        spec, epochs=int(res["epochs"]), psnr=res["psnr"], ssim=res["ssim"],
        images=res["images"], engine=FP32_EVAL, backend="fake-quant fp32",
        stored_bytes=size.stored_bytes, fp32_bytes=size.fp32_bytes, file_bytes=None,
        commands=steps, psnr_per_image=_per_image_psnr(res.get("per_image")))


def process(spec: RunSpec, opts: QueueOptions, progress: Progress) -> EvalRecord | None:
    """Bring one run up to date (train, then evaluate); returns its new record, if any."""
    paths = cmds.paths_for(opts.runs, spec)
    state = run_state(paths.run_dir, spec.epochs)
    action = next_action(spec, state, load_record(paths.record), opts.eval_partial,
                         opts.score_only)
    if action == "done":
        progress.finish(spec.name, f"already evaluated at {state.epochs_done} epochs")
        return None
    if action == "busy":
        progress.finish(spec.name, f"{state.describe()}: left alone, evaluate it later")
        return None
    if action == "untrained":
        progress.finish(spec.name, "not trained yet: nothing to score (--score-only)")
        return None
    if action == "train":
        _train(spec, paths, opts, progress)
    progress.say(spec.name, "evaluating " + ("through the packed engine" if spec.packed
                                             else "with qgen-eval (32-bit: no packed form)"))
    record = _evaluate(spec, paths, opts)
    save_record(paths.record, record)
    progress.finish(spec.name, f"{record.column} at {record.epochs} epochs: PSNR "
                               f"{record.psnr:.2f} dB, SSIM {record.ssim:.4f}")
    return record


def run_queue(specs: Sequence[RunSpec], opts: QueueOptions,
              on_record: Callable[[], None] | None = None,
              out: Callable[[str], None] = print) -> list[str]:
    """Process ``specs`` in order, ``opts.lanes`` at a time; ``on_record`` runs after each new
    record (to refresh the report). Returns the failures, one line each."""
    progress = Progress(len(specs), out)
    failures: list[str] = []
    lock = threading.Lock()

    def work(spec: RunSpec) -> None:
        try:
            record = process(spec, opts, progress)
        except StepStopped as exc:
            progress.finish(spec.name, f"stopped: {exc}")
            return
        except Exception as exc:  # one broken run must not stop the rest of the queue
            progress.finish(spec.name, f"FAILED: {exc}")
            with lock:
                failures.append(f"{spec.name}: {exc}")
            return
        if record is not None and on_record is not None:
            with lock:  # one report writer at a time (matplotlib is not thread safe)
                on_record()

    with ThreadPoolExecutor(max_workers=max(1, opts.lanes)) as pool:
        try:
            list(pool.map(work, specs))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            interrupt_children()  # the lanes then see them exit and wind down
            raise
    return failures


def drive(parser: argparse.ArgumentParser, args: argparse.Namespace, full: Sequence[RunSpec],
          write_report: Callable[[], Path], header: Sequence[str] = ()) -> tuple[int, Path | None]:
    """What both reproduction scripts do with a plan: select ``--only``, print it for
    ``--dry-run``, else train and score the queue (rewriting the report after every record) and
    write the report. Returns (exit code, report path or None for a dry run)."""
    specs = select(full, args.only)
    if args.only and not specs:
        parser.error(f"--only {args.only} matches no run of the plan")
    opts = QueueOptions(args.runs, threads=args.threads, lanes=args.lanes, backend=args.backend,
                        device=args.device, eval_partial=args.eval_partial,
                        score_only=args.score_only)
    if args.dry_run:
        for line in header:
            print(line)
        print(f"{len(specs)} runs, in queue order ({args.epochs} epochs per model; runs in "
              f"{args.runs}):")
        print("\n".join(describe_plan(specs, opts)))
        return 0, None
    failures: list[str] = []
    if not args.report_only:
        import torch

        from qgen_infer.signals import sigterm_stops

        torch.set_num_threads(args.threads)  # the in-process Figure-4 images of 32-bit models
        try:
            with sigterm_stops():  # kill -TERM (cifar_runs.sh stop): Ctrl-C's path, children too
                failures = run_queue(specs, opts, on_record=write_report)
        except KeyboardInterrupt:
            print("interrupted: finished epochs are checkpointed; run the same command again to "
                  "resume", file=sys.stderr)
            return 130, None
    report = write_report()
    print(f"report: {report}")
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    return (1 if failures else 0), report
