"""When each rank reached each phase of a job, for finding what keeps it from scaling.

Times are wall-clock seconds (``time.time()``), comparable across the ranks of one machine (and
across machines as far as their clocks agree); :func:`process_start` reads the process's own
start from ``/proc`` so that the interpreter's start and the imports are seen too.
"""

from __future__ import annotations

import os
import time


def process_start() -> float | None:
    """This process's start as a ``time.time()`` value (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            # field 22, after the parenthesised command name (which may hold spaces)
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class Timeline:
    """Named moments of one rank: ``mark(label)`` appends (label, time.time())."""

    def __init__(self) -> None:
        start = process_start()
        self.marks: list[tuple[str, float]] = [("process start", start)] if start else []

    def mark(self, label: str) -> None:
        self.marks.append((label, time.time()))
