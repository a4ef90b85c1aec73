"""Upper bounds on every count a user or a file can ask for: one table, shared by the file
schema, the library's option checks and the command-line flags.

They bound time and memory against typos and hostile files (``--restarts 100000000``, a file's
``steps: 10**9``), far above any real use: the paper runs T = 3-6 steps and a few restarts.
Memory is also checked against the machine before a batch is allocated (``engine.memory``).
"""

from __future__ import annotations

import os

MAX_STEPS = 10_000  # proximal steps T
MAX_LATENT = 1 << 20  # latent entries d (and so the sparsity s)
MAX_MEASUREMENTS = 1 << 24  # values per image m
MAX_RESTARTS = 10_000  # random starts per image
MAX_BATCH = 1 << 20  # images solved together
MAX_STEP_SIZE = 1e6  # latent step beta
MAX_COUNT = 1 << 40  # images asked for (--count, --eval-size)
MAX_EPOCHS = 1_000_000  # training passes
MAX_LOSS_WEIGHT = 1e6  # weights of loss terms
MAX_NOISE = 1e6  # measurement noise sigma: far above any y, far below float32 overflow


def max_threads() -> int:
    """Threads a process may ask for: the CPUs it can run on (more only adds contention)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
