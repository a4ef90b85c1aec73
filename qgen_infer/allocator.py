"""Freed tensor memory kept inside the process, so that training and the reconstruction loop do
not pay a page fault per page of every large tensor they allocate.

glibc's malloc serves blocks above its mmap threshold (128 KiB, rising adaptively) with fresh
``mmap`` calls and returns them to the kernel on ``free``; a DCGAN training step allocates and
frees hundreds of 4-16 MiB activations, and the kernel zero-fills every page of each one again
(a [64, 64, 32, 32] float product took 13.4 ms with a fresh output against 5.9 ms into an
existing one; measured 2026-12-04 on the 2-vCPU development machine). Raising the mmap
threshold to glibc's 64-bit ceiling and the trim threshold out of reach makes ``free`` keep
those blocks for the next allocation. The arithmetic is unchanged: only where memory comes from.
The process's resident memory then stays near its peak instead of shrinking between steps.

Called by ``Trainer`` and by ``qgen_infer.load`` for CPU models (so every CLI and the Python API
get it); leaf module, imported by both sides of the train -> engine data flow.
``QGEN_KEEP_FREED_MEMORY=0`` leaves glibc's defaults alone (a process that must give memory back
between calls; also the A/B of ``bench/time_dcgan_reconstruct.py``).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at 4 MiB * sizeof(long): 32 MiB on 64-bit (larger values are refused)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: the heap is never trimmed below 2 GiB


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks of up to 32 MiB for reuse; True when it took both
    settings, False where there is no glibc (other C libraries, macOS, Windows) or
    ``QGEN_KEEP_FREED_MEMORY=0`` asks to leave the allocator alone."""
    if not sys.platform.startswith("linux") or os.environ.get("QGEN_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
