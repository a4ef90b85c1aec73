"""How many CPU threads a solve should use when the user did not say: the cores other processes
leave idle, measured from ``/proc/stat`` over a window, re-checked as the load changes.

Why: torch's operators (and the kernels' OpenMP team) split each product evenly over their
threads and wait for the slowest, so one thread sharing its core with a busy process holds every
product back by its time slices. Measured on the 2-vCPU development machine beside one
``python -c 'while True: pass'``: ``qgen-reconstruct`` at torch's default 2 threads ran several
times slower than at ``--threads 1`` (``bench/results/threads-under-load.md``).

The busy cores of *other* processes over a window are
``(busy jiffies of the machine) / CLK_TCK - (this process's CPU seconds)``, divided by the wall
time; busy = user + nice + system + irq + softirq + steal (a hypervisor's steal is a core we do
not get either). Linux only; elsewhere the count stays torch's default.

Not an engine internal: reconstruction (``qgen-reconstruct``) and training (``qgen-train``,
``qgen-demo``, ``qgen-eval``) both size their threads with it. All of them probe (one thread
more than fits, kept if the other work yields): the training CLIs at the start, the per-batch
ones (``qgen-reconstruct``, ``qgen-eval``) first after ``PROBE_EVERY_S``, because a failed
probe costs them a whole batch.
"""

from __future__ import annotations

import os
import time

import torch

# the window for callers re-checking after every training step (tens of ms each): over 0.5 s
# the jiffies' rounding is under 0.05 cores, and a competitor is followed within a second
STEP_WINDOW_S = 0.5
# how often a caller that allows probing tries one thread more than the idle cores suggest
# (other work that yields, e.g. a niced session's, shows as busy in /proc/stat)
PROBE_EVERY_S = 60.0
# a probe that fails costs at most its own window, so the next one waits at least that window
# divided by this share: a window of one long batch (seconds) spaces the probes out further
PROBE_PRICE = 0.03


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; container CPU limits are not read)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot, or None where /proc/stat is absent."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def threads_for(others_busy: float, cores: int, cap: int) -> int:
    """Threads that fit beside ``others_busy`` cores of other work: the idle cores, counting a
    core three-quarters idle as free, at least 1 and at most ``cap``."""
    return max(1, min(cap, int(cores - others_busy + 0.25)))


class IdleCoreMonitor:
    """Measures the cores other processes keep busy between calls of :meth:`threads`."""

    def __init__(self, cap: int | None = None, min_window_s: float = 0.05,
                 probe_every_s: float | None = None, probe_at_start: bool = True) -> None:
        self.cores = usable_cores()
        self.cap = min(cap or torch.get_num_threads(), self.cores)
        # under 50 ms the 10 ms jiffies are too coarse; callers checking every training step
        # ask for a longer window so that one step's noise does not flip the count
        self.min_window_s = max(0.05, min_window_s)
        self.probe_every_s = probe_every_s
        self.own_cores = 0.0  # cores this process used over the last measured window
        self.window_s = 0.0  # the last measured window's length
        self.used: list[int] = []  # every count follow() left torch at, in order, repeats merged
        self._probing = False  # the window being measured runs one thread more than fits
        self._mark = self._sample()
        # callers following per batch start late: a failed probe costs a whole batch, which
        # a short run would not earn back
        self._next_probe = 0.0 if probe_at_start or probe_every_s is None \
            else self._mark[0] + probe_every_s

    @staticmethod
    def _sample() -> tuple[float, float, float | None]:
        return time.monotonic(), time.process_time(), _busy_seconds()

    def others_busy(self) -> float | None:
        """Cores busy with other processes since the last measured call (None: not measurable,
        or a window shorter than ``min_window_s``; the window then keeps growing)."""
        now = self._sample()
        (t0, own0, busy0), (t1, own1, busy1) = self._mark, now
        if busy0 is None or busy1 is None or t1 - t0 < self.min_window_s:
            return None
        self._mark = now
        self.window_s = t1 - t0
        self.own_cores = (own1 - own0) / (t1 - t0)
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))

    def threads(self, current: int) -> int:
        """The thread count for the next stretch of work (``current`` when not measurable).
        With ``probe_every_s``: below the cap, one window every ``probe_every_s`` (or every
        probe window / ``PROBE_PRICE``, if longer) runs one thread more, kept if this process
        then used (nearly) a core per thread, i.e. the other work yielded (a niced session's
        does; an equal-share competitor's does not). The first probe comes at the first
        measured window, or with ``probe_at_start=False`` ``probe_every_s`` after the start."""
        busy = self.others_busy()
        if busy is None:
            return current
        fit = threads_for(busy, self.cores, self.cap)
        if self.probe_every_s is None:
            return fit
        now = self._mark[0]
        if self._probing:  # the window just measured ran the probe's count
            self._probing = False
            self._next_probe = now + max(self.probe_every_s, self.window_s / PROBE_PRICE)
            return current if self.own_cores >= current - 0.25 else fit
        if fit < self.cap and now >= self._next_probe:
            self._probing = True
            return fit + 1
        return fit

    def follow(self) -> int | None:
        """Set torch's thread count to :meth:`threads`; the new count if it changed, else None
        (either way recorded in :attr:`used`, which the CLIs report). Cheap (one read of
        /proc/stat), so it may be called after every batch or step."""
        current = torch.get_num_threads()
        threads = self.threads(current)
        if not self.used or self.used[-1] != threads:
            self.used.append(threads)
        if threads == current:
            return None
        torch.set_num_threads(threads)
        return threads


def idle_core_monitor(threads: int | None, device: str | torch.device,
                      min_window_s: float = 0.05, probe_every_s: float | None = None,
                      probe_at_start: bool = True) -> IdleCoreMonitor | None:
    """The CLIs' ``--threads``: a given count is set now (None returned); without one, on the
    CPU, a monitor measuring from now on (call :meth:`IdleCoreMonitor.follow` once the start-up
    work is done, then per batch/step); on a GPU None (the threads only feed it)."""
    if threads is not None:
        torch.set_num_threads(threads)
        return None
    if torch.device(device).type != "cpu":
        return None
    return IdleCoreMonitor(min_window_s=min_window_s, probe_every_s=probe_every_s,
                           probe_at_start=probe_at_start)


__all__ = ["PROBE_EVERY_S", "PROBE_PRICE", "STEP_WINDOW_S", "IdleCoreMonitor", "idle_core_monitor",
           "threads_for", "usable_cores"]
