"""``qgen-reconstruct`` under ``torchrun``: the images split across the ranks in resumable shards
(:func:`qgen_infer.distributed.reconstruct_sharded`), then rank 0 writes the outputs a
single-process run writes, from the merged shards.

OUT/shards/ holds the manifest and the shard files and stays after the job, so that a rerun of
the same command (without ``--force``, which starts over) skips the finished shards.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

from qgen_infer.cli.common import EXIT_INTERRUPTED
from qgen_infer.distributed import DistEnv, JobFailed, check_all, join, leave, reconstruct_sharded
from qgen_infer.distributed.env import device_for, exit_process
from qgen_infer.distributed.timeline import Timeline
from qgen_infer.errors import QgenError
from qgen_infer.signals import Stopped, signals_deferred, stop_signals

SHARDS = "shards"


def _check_out(out: Path, force: bool) -> None:
    """An existing OUT is taken only when it holds shards (a rerun) or with ``--force``."""
    if out.exists():
        if not out.is_dir():
            raise QgenError(f"{str(out)!r} exists and is not a folder")
        if not (out / SHARDS).is_dir() and not force:
            raise QgenError(f"output folder {str(out)!r} exists and holds no shards to resume; "
                            f"pass --force to replace it")
    elif not out.parent.is_dir():
        raise QgenError(f"folder {str(out.parent)!r} does not exist")


def reconstruct_sharded_main(args: argparse.Namespace, out: Path) -> NoReturn:
    """The sharded run of ``qgen-reconstruct``'s parsed ``args``; ends the process with its
    exit code. Only rank 0 prints: errors (one line naming the failed ranks), the progress bar
    and the summary."""
    from qgen_infer.cli.reconstruct import _device

    timeline = Timeline()  # this rank's phases, from its process start (metrics.json)
    timeline.mark("imports done")
    stop_signals()  # Ctrl-C and torchrun's SIGTERM: the same clean stop, said once
    device = _device(args)
    env = join("cuda" if device and device.startswith("cuda") else "cpu")
    try:
        code = _sharded(args, out, env, device_for(env, device), timeline)
    except JobFailed as exc:
        if exc.report_here:
            print(f"qgen-reconstruct: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        stop_signals(ignore=True)
        if env.is_main:
            how = exc.signal_name if isinstance(exc, Stopped) else "SIGINT"
            kept = len(list((out / SHARDS).glob("shard-*.npz")))
            print(f"qgen-reconstruct: stopped by {how}; {kept} finished shard(s) kept in "
                  f"{out / SHARDS}: rerun the same command (without --force) to continue",
                  file=sys.stderr)
        leave(wait=False)
        exit_process(EXIT_INTERRUPTED)
    leave()
    exit_process(code)


def _sharded(args: argparse.Namespace, out: Path, env: DistEnv, device: str | None,
             timeline: Timeline) -> int:
    stages: list[Path] = []  # rank 0's staging folder, once made
    try:
        return _run(args, out, env, device, stages, timeline)
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)  # gone already after a commit


def _run(args: argparse.Namespace, out: Path, env: DistEnv, device: str | None,
         stages: list[Path], timeline: Timeline) -> int:
    import tqdm

    from qgen_infer.arrays import open_measurements
    from qgen_infer.cli.reconstruct import (
        _commit,
        _load_truth,
        _make_stage,
        _results_on_disk,
        _setup,
        _start_threads,
        _summary_line,
        _write_results,
    )

    error: BaseException | None = None
    truth = into = stage = None
    try:
        model, opts, settings = _setup(args, device)
        _start_threads(args, model, settings, None)  # torchrun's OMP_NUM_THREADS, or --threads
        if env.is_main:  # the merged x_hat and z go to row files in a stage, as one process's do
            _check_out(out, args.force)
            images = open_measurements(args.measurements, int(model.config["measurements"]))
            truth = _load_truth(args, model, images.shape[0])
            stage = _make_stage(out)
            stages.append(stage)
            into = _results_on_disk(stage, images.shape[0], model.config["image_shape"],
                                    opts.latent_dim)
    except Exception as exc:  # reported by every rank together
        error = exc
    check_all(env, error)
    timeline.mark("model loaded")
    bar = None
    if env.is_main and not args.quiet:
        bar = tqdm.tqdm(unit="img", desc=f"rank 0 of {env.world_size}: {model.backend.name} "
                                         f"{model.bits}-bit")
    try:
        run = reconstruct_sharded(model, args.measurements, out / SHARDS, opts, fresh=args.force,
                                  env=env, on_images=bar.update if bar is not None else None,
                                  cuda_graph=args.cuda_graph, precision=args.precision,
                                  into=into, timeline=timeline)
    finally:
        if bar is not None:
            bar.close()
    error = None
    if stage is not None:
        extra: dict[str, Any] = {"distributed": {
            "world_size": env.world_size, "shards": run.plan.count,
            "shard_images": run.plan.shard_images, "shards_skipped": run.skipped,
            "wall_seconds": run.wall_seconds, "rank_solve_seconds": run.solve_seconds,
            "rank_solve_cpu_seconds": run.solve_cpu_seconds, "rank_timeline": run.timeline}}
        try:
            m = _write_results(stage, model, run.result, truth, settings, interrupted=False,
                               extra=extra)
            with signals_deferred():  # the outputs move into place whole, or not at all
                _commit(stage, out)
        except Exception as exc:
            error = exc
    check_all(env, error)  # the other ranks wait for the outputs, and fail if they did
    if env.is_main:
        print(_summary_line(m, model, out) + f" ({env.world_size} processes, {run.skipped} of "
              f"{run.plan.count} shards from an earlier run, {run.wall_seconds:.2f} s wall)")
    return 0
