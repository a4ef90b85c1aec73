"""Reconstruction split across the ranks of a torch.distributed job, in resumable shards.

The images are cut into shards of whole solver batches, at the batch boundaries a
single-process run uses, and an image's random starts depend on the seed, the restarts and its
index only (:class:`qgen_infer.reconstruction.StartLatents`): so every image is solved exactly
as ``qgen_infer.reconstruct`` solves it in one process, and the merged result is the same, bit
for bit, on the same backend and thread count (for the cpu backend's ``auto`` dispatch, rank 0
measures every product and the other ranks run its choices: :mod:`.dispatch`). The ranks take
the pending shards in order, each rank the next one no other rank has claimed, so a rank that
gets more of a busy machine's cores solves more of them. The shard folder::

    DIR/manifest.json      the job (model file hash, input, solver settings, backend) and the
                           shard size, written by rank 0 before any work
    DIR/shard-00003.npz    images [start, stop) of shard 3: x_hat, z, loss, batch_seconds

A shard file exists only once complete (written under a temporary name, flushed to disk,
renamed), so a rank killed mid-shard leaves nothing that looks finished. A rerun of the same job
reads the manifest, skips the finished shards and shares the rest among its ranks (any
number of them). Measurements given as a ``.npy`` path are memory-mapped and read one shard at
a time. On several nodes DIR must be a folder they all share.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from qgen_infer.distributed.dispatch import (
    CHOICES_FILE,
    disagreements,
    follow,
    measure_products,
    measures,
    paths,
    publish_choices,
)
from qgen_infer.distributed.env import DistEnv, broadcast, check_all, gather, join
from qgen_infer.distributed.timeline import Timeline
from qgen_infer.errors import QgenError
from qgen_infer.reconstruction import (
    Reconstruction,
    SolverOptions,
    reconstruct,
    resolve_precision,
    solver_options,
)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "qgen-shards"
MANIFEST_VERSION = 1
# Shards per rank by default: many, so that the ranks taking the next free shard end within a
# small shard of each other and a lost rank costs a fraction of its share; not more, so that
# files stay large and the merge cheap.
SHARDS_PER_RANK = 16
CLAIMS = ".claim-*"  # which rank took which shard (_claim), cleared before each run


@dataclass(frozen=True)
class ShardPlan:
    """``images`` cut into shards of ``shard_images`` (the last one shorter)."""

    images: int
    shard_images: int

    @property
    def count(self) -> int:
        return math.ceil(self.images / self.shard_images)

    def bounds(self, k: int) -> tuple[int, int]:
        start = k * self.shard_images
        return start, min(start + self.shard_images, self.images)


def default_shard_images(images: int, batch_size: int, world_size: int) -> int:
    """Whole batches, about :data:`SHARDS_PER_RANK` shards per rank."""
    batches = math.ceil(images / batch_size)
    return max(1, math.ceil(batches / (world_size * SHARDS_PER_RANK))) * batch_size


@dataclass
class ShardedRun:
    """What :func:`reconstruct_sharded` did. ``result`` (rank 0 only; None elsewhere): the whole
    reconstruction, merged from the shards, its ``batch_seconds`` every batch's compute time in
    image order. ``skipped``: shards finished by an earlier run; ``solved_here``: shards this
    rank solved. ``solve_seconds`` / ``solve_cpu_seconds``: each rank's wall and CPU time in
    its shards, rank 0's dispatch measuring included (rank 0 only; the CPU time shows how the
    work split on a busy machine). ``timeline``: each rank's (phase, ``time.time()``) marks
    (rank 0 only; :mod:`.timeline`)."""

    result: Reconstruction | None
    plan: ShardPlan
    skipped: int
    solved_here: int
    wall_seconds: float
    solve_seconds: list[float] | None = None
    solve_cpu_seconds: list[float] | None = None
    timeline: list[list[tuple[str, float]]] | None = None


class _Measurements:
    """The measurements ``[N, m]``: a memory-mapped ``.npy`` read a chunk of rows at a time, or
    an array already in memory."""

    def __init__(self, y: str | os.PathLike | np.ndarray, m: int) -> None:
        from qgen_infer.arrays import open_measurements

        self.path = Path(y) if isinstance(y, (str, os.PathLike)) else None
        if self.path is not None:
            self.array = open_measurements(self.path, m)
            st = self.path.stat()
            self.identity = {"path": str(self.path.resolve()), "bytes": st.st_size,
                             "mtime_ns": st.st_mtime_ns}
        else:
            from qgen_infer.reconstruction import _measurements_tensor

            self.array = _measurements_tensor(y, m).numpy()
            self.identity = {"sha256": hashlib.sha256(self.array.tobytes()).hexdigest()}
        self.images = int(self.array.shape[0])

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.path is None:
            return self.array[start:stop]
        from qgen_infer.arrays import measurement_rows

        return measurement_rows(self.array, start, stop, self.path)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_identity(model: Any, source: _Measurements, opts: SolverOptions,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """Everything a shard's values depend on: a rerun resumes only when all of it is equal."""
    return {"model_sha256": _file_sha256(model.path) if model.path else None,
            "backend": model.backend.name, "device_type": model.device.type,
            "input": source.identity, "images": source.images, "settings": asdict(opts),
            **extra}


def shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.npz"


def _prepare(folder: Path, identity: dict[str, Any], plan: ShardPlan, fresh: bool
             ) -> tuple[ShardPlan, list[int]]:
    """Rank 0: the job's manifest (written, or read and held to ``identity``) and the finished
    shards. ``fresh`` discards an earlier job's shards first."""
    manifest = folder / MANIFEST
    if fresh:
        for old in [*folder.glob("shard-*.npz*"), manifest]:
            old.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in [*folder.glob(".shard-*.tmp"), *folder.glob(CLAIMS), folder / CHOICES_FILE]:
        tmp.unlink(missing_ok=True)  # a rank stopped mid-write, an earlier run's claims
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
            old_identity = saved["job"]
            plan = ShardPlan(int(saved["images"]), int(saved["shard_images"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise QgenError(f"{manifest} is not a readable shard manifest ({exc}); remove the "
                            f"folder or start over with --force") from None
        differ = _differences(old_identity, identity)
        if differ:
            raise QgenError(f"{folder} holds shards of another job ({'; '.join(differ)}); rerun "
                            f"the same command to resume it, or start over with --force")
    else:
        from qgen_infer.arrays import write_text_atomic

        write_text_atomic(manifest, json.dumps({
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "images": plan.images,
            "shard_images": plan.shard_images, "job": identity}, indent=2) + "\n")
    finished = [k for k in range(plan.count) if shard_path(folder, k).is_file()]
    return plan, finished


def _differences(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    out = []
    for key in sorted({*old, *new}):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{where}{key}.")
        elif a != b:
            out.append(f"{where}{key} was {a!r}, now {b!r}")
    return out


def _claim(folder: Path, k: int) -> bool:
    """Take shard ``k`` for this rank, unless another rank took it first: the ranks take the
    pending shards in order, each the next one free (created exclusively, so exactly one rank
    wins), so that a rank that gets more of the cores also solves more shards."""
    try:
        os.close(os.open(folder / f".claim-{k:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@dataclass
class _Leader:
    """Rank 0's duty, once, when the other ranks may wait on its dispatch choices: measure the
    job's products and publish the choices, or the failure (:mod:`.dispatch`)."""

    folder: Path
    model: Any
    source: _Measurements
    opts: SolverOptions
    solve: dict[str, Any]

    def publish(self, met: int | None) -> None:
        """Measure (but batch size ``met``, just solved for real) and publish."""
        try:
            measure_products(self.model, self.source.rows, self.source.images, self.opts,
                             met=met, **self.solve)
        except Exception as exc:
            self.failed(exc)
            raise
        publish_choices(self.folder, self.model, None)

    def failed(self, exc: BaseException) -> None:
        publish_choices(self.folder, None, exc)


def _solve_shard(model: Any, source: _Measurements, bounds: tuple[int, int], opts: SolverOptions,
                 on_images: Callable[[int], None] | None, leader: _Leader | None,
                 **solve: Any) -> Reconstruction:
    """Images ``[start, stop)`` of one shard. With ``leader`` (rank 0's first shard): its first
    batch is solved alone, so that its products are measured for real work, then the leader
    publishes, then the rest is solved; the batches are the same either way, so are the
    values."""
    start, stop = bounds
    parts, cut = [], start
    if leader is not None:
        cut = min(start + opts.batch_size, stop)
        try:
            parts.append(_solve_rows(model, source, start, cut, opts, on_images, **solve))
        except Exception as exc:  # the waiting ranks must not wait for ever
            leader.failed(exc)
            raise
        leader.publish(cut - start)
    if cut < stop:
        parts.append(_solve_rows(model, source, cut, stop, opts, on_images, **solve))
    if len(parts) == 1:
        return parts[0]
    return Reconstruction(
        x_hat=np.concatenate([p.x_hat for p in parts]), z=np.concatenate([p.z for p in parts]),
        loss=np.concatenate([p.loss for p in parts]), done=stop - start,
        batch_seconds=[t for p in parts for t in p.batch_seconds])


def _solve_rows(model: Any, source: _Measurements, start: int, stop: int, opts: SolverOptions,
                on_images: Callable[[int], None] | None, **solve: Any) -> Reconstruction:
    seen = [0]

    def progress(rec: Reconstruction, done: int) -> None:
        if on_images is not None:
            on_images(done - seen[0])
        seen[0] = done

    return reconstruct(model, source.rows(start, stop), opts, on_batch=progress,
                       first_index=start, **solve)


def _check_choices(env: DistEnv, folder: Path, model: Any, solved: list[int]) -> None:
    """A collective: the shards a rank solved with a path other than rank 0's for some
    product (possible only if another process rewrote the cost table meanwhile) are deleted,
    and the job fails saying so; a rerun solves them again."""
    everyone = gather(env, (paths(model), solved))
    error = None
    if everyone is not None and len(everyone) > 1:
        ranks = disagreements([mine for mine, _ in everyone])
        lost = sorted(k for rank in ranks for k in everyone[rank][1])
        for k in lost:
            shard_path(folder, k).unlink(missing_ok=True)
        if lost:
            error = QgenError(f"rank(s) {', '.join(map(str, ranks))} ran a product on another "
                              f"path than rank 0 (the CPU dispatcher's cost table changed during "
                              f"the job); their {len(lost)} shard(s) were discarded: rerun the "
                              f"same command to solve them again")
    check_all(env, error if env.is_main else None)


def _write_shard(folder: Path, k: int, start: int, rec: Reconstruction) -> None:
    """Write shard ``k`` under a temporary name, flushed to disk before the rename: the final
    name appears only for a complete file, even after a power cut."""
    from qgen_infer.atomic import write_atomic

    def write(f: IO[Any]) -> None:
        np.savez(f, start=np.int64(start), x_hat=rec.x_hat, z=rec.z, loss=rec.loss,
                 batch_seconds=np.asarray(rec.batch_seconds, np.float64))
        f.flush()
        os.fsync(f.fileno())

    write_atomic(shard_path(folder, k), write)


def _read_shard(folder: Path, k: int, plan: ShardPlan, out: Reconstruction) -> list[float]:
    """Shard ``k``'s values into ``out``; its batch times."""
    path = shard_path(folder, k)
    start, stop = plan.bounds(k)
    if not path.is_file():
        raise QgenError(f"shard {k} (images {start}..{stop - 1}) is missing from {folder} after "
                        f"every rank finished; on several nodes the output folder must be one "
                        f"they all share")
    try:
        with np.load(path, allow_pickle=False) as data:
            parts = {name: data[name] for name in ("start", "x_hat", "z", "loss",
                                                   "batch_seconds")}
    except Exception as exc:  # np.load raises many types on a damaged zip
        raise QgenError(f"shard file {path} is unreadable ({exc}); delete it and rerun to "
                        f"solve it again") from None
    n = stop - start
    want = {"x_hat": out.x_hat.shape[1:], "z": out.z.shape[1:], "loss": ()}
    if int(parts["start"]) != start or any(parts[name].shape != (n, *shape)
                                           for name, shape in want.items()):
        raise QgenError(f"shard file {path} does not hold images {start}..{stop - 1} of this "
                        f"job; delete it and rerun to solve it again")
    out.x_hat[start:stop], out.z[start:stop], out.loss[start:stop] = (
        parts["x_hat"], parts["z"], parts["loss"])
    return [float(t) for t in parts["batch_seconds"]]


def _merge(folder: Path, plan: ShardPlan, model: Any, opts: SolverOptions,
           into: Reconstruction | None) -> Reconstruction:
    """The shards, in order, into ``into`` (arrays, or row files written in order) or into new
    arrays."""
    n, shape = plan.images, tuple(model.config["image_shape"])
    out = into or Reconstruction(x_hat=np.zeros((n, *shape), np.float32),
                                 z=np.zeros((n, opts.latent_dim), np.float32),
                                 loss=np.full(n, np.nan, np.float32))
    out.done = n
    for k in range(plan.count):
        out.batch_seconds += _read_shard(folder, k, plan, out)
    return out


def reconstruct_sharded(model: Any, y: str | os.PathLike | np.ndarray, folder: str | os.PathLike,
                        options: SolverOptions | None = None, *, shard_images: int | None = None,
                        fresh: bool = False, env: DistEnv | None = None,
                        on_images: Callable[[int], None] | None = None,
                        cuda_graph: bool | None = None, precision: str = "auto",
                        into: Reconstruction | None = None, timeline: Timeline | None = None,
                        **overrides: Any) -> ShardedRun:
    """:func:`qgen_infer.reconstruct` over the ranks of this process's torch.distributed job
    (started by ``torchrun``; a job of one otherwise), resumable, with its shards in ``folder``.

    Every rank calls it with the same arguments. ``y``: a ``.npy`` path (memory-mapped, read a
    shard at a time) or an array ``[N, m]``. ``shard_images`` (rounded up to whole batches;
    default :func:`default_shard_images`) applies to a new job; a rerun keeps its manifest's.
    ``fresh`` discards the shards of an earlier job in ``folder``; without it a rerun with
    other inputs or settings is refused, and one with the same skips the finished shards.
    ``on_images(count)``: called as this rank finishes images. Rank 0 returns the merged
    :class:`Reconstruction` in ``.result``: ``into`` when given (rank 0's; its arrays or
    :class:`qgen_infer.npy_rows.NpyRowWriter` files are filled in image order), else new
    arrays. ``timeline``: where this rank marks its phases (the caller's, with its own earlier
    marks; a new one from the process start otherwise), returned for every rank in
    ``.timeline``. A failure on any rank raises :class:`qgen_infer.distributed.JobFailed` on every
    rank, naming the ranks that failed.
    """
    t0 = time.perf_counter()
    env = env or join(model.device.type)
    timeline = timeline or Timeline()
    timeline.mark("sharded start")
    folder = Path(folder)
    precision = resolve_precision(model, precision)  # the job's identity names what runs
    error: BaseException | None = None
    state = None
    try:
        if options is not None and overrides:
            raise QgenError(f"pass either options or keyword overrides, not both "
                            f"(got {', '.join(sorted(overrides))})")
        opts = options or solver_options(model, **overrides)
        source = _Measurements(y, int(model.config["measurements"]))
        if env.is_main:
            size = shard_images or default_shard_images(source.images, opts.batch_size,
                                                        env.world_size)
            if size < 1:
                raise QgenError(f"shard size must be at least 1 image, got {size}")
            size = math.ceil(size / opts.batch_size) * opts.batch_size
            identity = job_identity(model, source, opts, {"cuda_graph": cuda_graph,
                                                          "precision": precision})
            state = _prepare(folder, identity, ShardPlan(source.images, size), fresh)
    except Exception as exc:  # reported by every rank together, below
        error = exc
    check_all(env, error)
    plan, finished = broadcast(env, state)
    timeline.mark("plan agreed")
    pending = sorted(set(range(plan.count)) - set(finished))
    mine = pending[env.rank::env.world_size]

    error = None
    try:  # the input's values, checked a shard at a time before any rank starts solving
        for k in mine:
            source.rows(*plan.bounds(k))
    except Exception as exc:
        error = exc
    check_all(env, error)
    timeline.mark("inputs checked")
    leads = pending and env.world_size > 1 and measures(model)  # the same on every rank
    if leads and not env.is_main:
        follow(model, folder)  # solve at once; rank 0's choices where the cost table has none

    error = None
    t_solve, cpu_solve = time.perf_counter(), time.process_time()
    solved: list[int] = []
    solve = {"cuda_graph": cuda_graph, "precision": precision}
    leader = _Leader(folder, model, source, opts, solve) if leads and env.is_main else None
    try:
        for k in pending:
            if not _claim(folder, k):
                continue  # another rank has it
            rec = _solve_shard(model, source, plan.bounds(k), opts, on_images, leader, **solve)
            if leader is not None:
                timeline.mark("dispatch published")
            leader = None  # once, with rank 0's first shard
            _write_shard(folder, k, plan.bounds(k)[0], rec)
            solved.append(k)
        if leader is not None:  # rank 0 found no shard left to claim
            leader.publish(None)
    except Exception as exc:
        error = exc
    timeline.mark("shards solved")
    check_all(env, error)
    timeline.mark("all ranks solved")
    _check_choices(env, folder, model, solved)
    times = gather(env, (time.perf_counter() - t_solve, time.process_time() - cpu_solve))
    error, result = None, None
    try:
        result = _merge(folder, plan, model, opts, into) if env.is_main else None
    except Exception as exc:
        error = exc
    timeline.mark("merged")
    check_all(env, error)
    if env.is_main:  # the job is whole: the claims and rank 0's choices have done their work
        for done in [*folder.glob(CLAIMS), folder / CHOICES_FILE]:
            done.unlink(missing_ok=True)
    timelines = gather(env, timeline.marks)
    return ShardedRun(result=result, plan=plan, skipped=len(finished), solved_here=len(solved),
                      wall_seconds=time.perf_counter() - t0,
                      solve_seconds=[w for w, _ in times] if times else None,
                      solve_cpu_seconds=[c for _, c in times] if times else None,
                      timeline=timelines)
