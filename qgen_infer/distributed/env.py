"""The torch.distributed job this process is part of, as ``torchrun`` describes it.

``torchrun`` starts one process per rank and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and
the rendezvous address in each one's environment; :func:`join` turns that into a process group
(gloo for CPU tensors, NCCL for CUDA ones). Without those variables a process is a job of one.

Failures are agreed on, not left to hang: each phase of a job ends in :func:`check_all`, where
every rank reports whether its part failed, and all ranks stop together with one message that
names the failed ranks (:class:`JobFailed`).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from qgen_infer.errors import QgenError

# How long a rank waits in a collective for the others (the final barrier waits for the slowest
# rank's shards): torch's 30-minute default would end a long job whose ranks finish apart.
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes what the job writes once (manifest, merged outputs, checkpoints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher that sets ``WORLD_SIZE``) started this process."""
    return "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise QgenError(f"environment variable {name}={value!r} is not an integer") from None


def join(device_type: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """This process's :class:`DistEnv`, joining the process group first when ``torchrun``
    started it (gloo for ``device_type`` "cpu", NCCL for "cuda"); a job of one otherwise."""
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    if not launched():
        return DistEnv()
    env = DistEnv(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if not 0 <= env.rank < env.world_size:
        raise QgenError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)  # NCCL needs each rank on its own GPU
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return env


def leave(wait: bool = True) -> None:
    """Leave the process group (when :func:`join` made one), after the other ranks when
    ``wait``: gloo aborts the process ("terminate called without an active exception") now and
    then when a rank tears its group down while another is still working."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a torchrun rank now, with ``code``, after flushing its output: the interpreter's
    finalization is skipped, where gloo's worker threads can still abort the process with
    "terminate called without an active exception" (seen here about 1 run in 10 even after
    :func:`leave`; pytorch/pytorch PR 179291 describes the crash)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device_for(env: DistEnv, device: str | None) -> str | None:
    """A rank's torch device: a bare ``cuda`` means this rank's GPU, ``cuda:LOCAL_RANK``."""
    if device == "cuda" and env.distributed:
        return f"cuda:{env.local_rank}"
    return device


class JobFailed(QgenError):
    """One or more ranks failed; every rank raises it, with the same message, which rank 0
    alone prints (``report_here``). ``user_error``: every failure was a :class:`QgenError` (a
    problem with the input: exit code 2, else 1)."""

    def __init__(self, message: str, user_error: bool, report_here: bool) -> None:
        super().__init__(message)
        self.user_error = user_error
        self.report_here = report_here

    @property
    def exit_code(self) -> int:
        return 2 if self.user_error else 1


def _describe(exc: BaseException) -> tuple[str, bool]:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, QgenError):
        return text, True
    return f"{type(exc).__name__}: {text}", False


def check_all(env: DistEnv, error: BaseException | None) -> None:
    """A collective: each rank passes the exception its part raised (or None); if any rank
    failed, every rank raises :class:`JobFailed` naming them. With one process, ``error`` is
    raised as it is."""
    if not env.distributed:
        if error is not None:
            raise error
        return
    mine = None if error is None else _describe(error)
    everyone: list[Any] = [None] * env.world_size
    dist.all_gather_object(everyone, mine)
    failed = [(rank, status) for rank, status in enumerate(everyone) if status is not None]
    if not failed:
        return
    user_error = all(is_user for _, (_, is_user) in failed)
    texts = {text for _, (text, _) in failed}
    if len(failed) == env.world_size and len(texts) == 1:  # the same input error everywhere
        raise JobFailed(texts.pop(), user_error, env.is_main)
    rank, (text, _) = failed[0]
    more = f" (and {len(failed) - 1} more rank(s): {', '.join(str(r) for r, _ in failed[1:])})"
    raise JobFailed(f"rank {rank} of {env.world_size} failed: {text}"
                    f"{more if len(failed) > 1 else ''}", user_error, env.is_main)


def broadcast(env: DistEnv, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object made by this package, never a
    user's file)."""
    if not env.distributed:
        return value
    box = [value if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(env: DistEnv, value: Any) -> list[Any] | None:
    """Every rank's ``value`` on rank 0, in rank order (None on the other ranks)."""
    if not env.distributed:
        return [value]
    everyone: list[Any] = [None] * env.world_size
    dist.gather_object(value, everyone if env.is_main else None, dst=0)
    return everyone if env.is_main else None
