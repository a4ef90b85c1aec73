"""Which path runs a CPU product: the packed LUT kernels or a dense fp32 matmul, per layer and
batch size, by measured cost.

The packed kernels win where they read far fewer bytes (small batches, 1-2 bits, wide SIMD) and
lose where torch's fp32 GEMM (oneDNN) is compute-bound and they are not (large batches, 3-4 bits,
the AVX2 and portable tiers). ``--backend auto`` therefore asks, for every product it has not
seen before, which is faster *here*: the cost model is a table of measured seconds

    cost(path | op, bits, N, K, M bucket, sparse input)     path in {packed, dense}

filled at first use by timing both paths on the product's real input (one untimed warm-up call
each, then interleaved rounds, best of up to 3, stopping early when one path is more than 2x
faster: a few ms per product; in thread CPU time when the product runs on one thread, so that a
busy machine's time slices do not enter), and kept on
disk per machine context ``CPU model | ISA | threads | torch version`` so that later processes
skip the measurement. ``M bucket`` is the next power of two of the batch rows, so the last,
smaller batch of a reconstruction reuses the full batches' choice.

Environment: ``QGEN_CPU_DISPATCH=measured|packed|dense`` (what ``auto`` does on the CPU; default
``measured``), ``QGEN_CPU_DISPATCH_CACHE=PATH|off`` (the table's file; default
``$XDG_CACHE_HOME/qgen-infer/cpu-dispatch.json``, i.e. ``~/.cache/...``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qgen_infer.errors import QgenError

DISPATCH_MODES = ("measured", "packed", "dense")
PATHS = ("packed", "dense")
CACHE_VERSION = 1
# A path this many times slower after one round is not measured again (keeps first use cheap).
DECISIVE_RATIO = 2.0
MAX_ROUNDS = 3


def dispatch_mode(requested: str | None = None) -> str:
    """``requested``; for ``None`` or ``"auto"``, ``QGEN_CPU_DISPATCH``, else ``measured``."""
    mode = requested if requested not in (None, "auto") else (
        os.environ.get("QGEN_CPU_DISPATCH") or "measured")
    if mode not in DISPATCH_MODES:
        raise QgenError(f"QGEN_CPU_DISPATCH must be one of {', '.join(DISPATCH_MODES)}, "
                         f"got {mode!r}")
    return mode


def m_bucket(m: int) -> int:
    """The batch-rows bucket a choice is kept for: the next power of two >= ``m``."""
    return 1 if m <= 1 else 1 << (int(m) - 1).bit_length()


def is_sparse_input(x: torch.Tensor) -> bool:
    """At most 1/5 nonzero: the threshold where the kernels take their sparse-row path
    (csrc/drivers.h ``kSparseMaxDensity``), which changes the packed cost by up to 10x."""
    return bool(int(torch.count_nonzero(x)) * 5 <= x.numel())


@dataclass(frozen=True)
class ProductKey:
    """What one measured choice is about (one layer's product at one batch bucket)."""

    op: str  # "gemm", "gemm_t" or "gemm_t_epi" (the input gradient through the epilogue)
    bits: int
    n: int
    k: int
    m_bucket: int
    sparse: bool

    def text(self) -> str:
        return (f"{self.op} w{self.bits} {self.n}x{self.k} M<={self.m_bucket}"
                + (" sparse" if self.sparse else ""))


@functools.cache
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_context(isa: str, threads: int) -> str:
    """The key the measured costs hold for: another CPU, tier, thread count or torch differs."""
    return f"{cpu_model_name()} | {isa} | {threads} threads | torch {torch.__version__}"


def default_cache_path() -> Path | None:
    """``QGEN_CPU_DISPATCH_CACHE`` (``off``: none), else the user's cache folder."""
    env = os.environ.get("QGEN_CPU_DISPATCH_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qgen-infer" / "cpu-dispatch.json"


class CostTable:
    """Measured seconds per (machine context, product key), optionally backed by a JSON file.

    The file is read once, lazily; each new measurement is merged into a fresh read of it and
    written atomically, so processes sharing the file only ever add entries. A missing,
    unreadable or malformed file counts as empty (it is a cache, never an input)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, list[float]]] | None = None

    def _read(self) -> dict[str, dict[str, list[float]]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
            contexts = data["contexts"] if data.get("version") == CACHE_VERSION else {}
            return {str(c): {str(k): [float(v[0]), float(v[1])] for k, v in e.items()}
                    for c, e in contexts.items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return {}

    def entries(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Everything in the table: context -> product (``ProductKey.text``) -> seconds."""
        if self._entries is None:
            self._entries = self._read()
        return {c: {k: (v[0], v[1]) for k, v in e.items()} for c, e in self._entries.items()}

    def get(self, context: str, key: ProductKey) -> tuple[float, float] | None:
        if self._entries is None:
            self._entries = self._read()
        hit = self._entries.get(context, {}).get(key.text())
        return (hit[0], hit[1]) if hit is not None else None

    def put(self, context: str, key: ProductKey, packed_s: float, dense_s: float) -> None:
        entries = self._read()
        if self._entries is not None:  # keep what this process measured even if the file went
            for c, e in self._entries.items():
                entries.setdefault(c, {}).update(e)
        entries.setdefault(context, {})[key.text()] = [packed_s, dense_s]
        self._entries = entries
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".cpu-dispatch-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "contexts": entries}, f, indent=1)
            os.replace(tmp, self.path)
        except OSError:  # a read-only home: the choice still holds for this process
            pass


def faster_path(packed_s: float, dense_s: float) -> str:
    """The cheaper path; a tie goes to the packed kernels (they read fewer bytes)."""
    return "packed" if packed_s <= dense_s else "dense"


def time_call(path: str, run: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call of ``run`` (the ``path`` it runs), and its result."""
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, out


def thread_time_call(path: str, run: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds of the calling thread during one call: for single-threaded products, the
    time a busy machine's other processes do not add to (a wall-clock time that includes being
    descheduled for a few ms can reverse a 0.5 ms comparison)."""
    t0 = time.thread_time()
    out = run()
    return time.thread_time() - t0, out


@dataclass
class Choice:
    key: ProductKey
    packed_s: float
    dense_s: float
    path: str
    source: str  # "measured" (this process) or "cache" (the file)


class Dispatcher:
    """Chooses and remembers a path per product key (see the module docstring).

    ``measure(path, run) -> (seconds, result)`` times one call; tests inject fixed times. By
    default single-threaded products are timed in thread CPU time, others in wall time."""

    def __init__(self, table: CostTable,
                 measure: Callable[[str, Callable[[], Any]], tuple[float, Any]] | None = None
                 ) -> None:
        self.table = table
        self.measure = measure
        self.choices: dict[tuple[str, ProductKey], Choice] = {}

    def known(self, context: str, key: ProductKey) -> Choice | None:
        """The choice made for ``key`` in this process or found in the table, else None."""
        choice = self.choices.get((context, key))
        if choice is None:
            cached = self.table.get(context, key)
            if cached is not None:
                choice = Choice(key, cached[0], cached[1], faster_path(*cached), "cache")
                self.choices[(context, key)] = choice
        return choice

    def run(self, context: str, key: ProductKey, run_packed: Callable[[], Any],
            run_dense: Callable[[], Any], single_thread: bool = False) -> Any:
        """The product by the chosen path; the first time a key is seen here and not in the
        table, both paths are timed and the winner's result returned."""
        choice = self.known(context, key)
        if choice is not None:
            return run_packed() if choice.path == "packed" else run_dense()
        measure = self.measure or (thread_time_call if single_thread else time_call)
        best = {"packed": float("inf"), "dense": float("inf")}
        runs = {"packed": run_packed, "dense": run_dense}
        results = {path: run() for path, run in runs.items()}  # warm-up: caches, scratch, JIT
        for round_ in range(MAX_ROUNDS):  # alternating order: a disturbance hits both alike
            for path in PATHS if round_ % 2 == 0 else PATHS[::-1]:
                seconds, results[path] = measure(path, runs[path])
                best[path] = min(best[path], seconds)
            lo, hi = sorted(best.values())
            if hi > DECISIVE_RATIO * lo:
                break
        path = faster_path(best["packed"], best["dense"])
        self.choices[(context, key)] = Choice(key, best["packed"], best["dense"], path,
                                              "measured")
        self.table.put(context, key, best["packed"], best["dense"])
        return results[path]

    def report(self) -> list[dict[str, Any]]:
        """One row per choice made in this process (for metrics.json)."""
        return [{"product": c.key.text(), "context": ctx, "path": c.path,
                 "packed_ms": round(c.packed_s * 1e3, 4), "dense_ms": round(c.dense_s * 1e3, 4),
                 "source": c.source} for (ctx, _), c in self.choices.items()]


__all__ = ["DISPATCH_MODES", "Choice", "CostTable", "Dispatcher", "ProductKey", "cpu_model_name",
           "default_cache_path", "dispatch_mode", "faster_path", "is_sparse_input",
           "m_bucket", "machine_context"]
