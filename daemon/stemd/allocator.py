"""glibc malloc, tuned for a model that runs pass after pass on one thread.

On the CPU, PyTorch takes every activation of a forward pass from malloc and
gives it back at once. glibc serves blocks over its mmap threshold (at most
32 MiB) with fresh mmaps and unmaps them on free, so every pass faults in and
zeroes its memory again: about 1.5 million page faults per 15 s track for a
full-size HTDemucs. The model also runs on the worker thread, and glibc gives
each thread its own arena, which it trims more eagerly than the main one.

So, once at start-up, before other threads exist: one arena, no mmap for blocks
(they come from the heap and are reused, pass after pass), and a heap that keeps
up to 2 GiB of freed memory instead of trimming it at once. The worker hands the
free memory back to the system when the queue runs dry (`release_free_memory`),
so an idle daemon is small again.

Measured on the project's 2-core CPU, a full-size HTDemucs separating 15 s of
audio: 10.0-11.7 s and 1.5-2.2 million faults with glibc's defaults; 7.7-8.7 s
and under 42 000 faults tuned (tests/bench's floor uses the same setting).

Anyone who sets glibc's own knobs (MALLOC_ARENA_MAX, GLIBC_TUNABLES, ...) keeps
them: stemd then changes nothing. On a libc without mallopt (musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_FREE_BYTES = 2**31 - 1  # mallopt takes an int
USER_SETTINGS = (
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def tune_for_model() -> str | None:
    """Apply the settings above; what was done, for the log (None: nothing)."""
    libc = _libc()
    if libc is None or any(name in os.environ for name in USER_SETTINGS):
        return None
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREE_BYTES))
    if not all(libc.mallopt(param, value) for param, value in settings):
        return None
    return "malloc tuned: one arena, heap blocks reused between forward passes"


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system; True if any were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
