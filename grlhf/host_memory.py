"""Host memory for XLA:CPU: keep what a call frees for the next call instead of handing it back to the OS.

Every call of a compiled program on the CPU allocates its temporary buffers with ``malloc`` and frees them
on return. glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps
them on ``free``, and trims the top of its heaps as they shrink, so the next call touches new pages: one
page fault per 4 KiB. A GRM warm-start step of the embedded default faulted 54,000 times (211 MiB) and
spent 40% of its CPU time in the kernel. ``keep_freed_memory`` sets ``mallopt`` so that every block comes
from one heap (``M_ARENA_MAX=1``, ``M_MMAP_MAX=0``) and up to ``M_TRIM_THRESHOLD`` of free memory stays
mapped: the same step then faults ~1,000 times and its compiled gradient runs 22% faster (BENCHMARKS.md,
"Where the embedded default's time goes").

The command lines (``python -m grlhf.train``, ``python -m grlhf.eval``) call it before JAX starts its
threads; ``GRLHF_MALLOC=default`` leaves glibc's behaviour alone. The tests do not: their many small programs
gained nothing and ran ~7% slower with every thread on one arena. Other C libraries have no ``mallopt``;
there it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

MALLOC_ENV = "GRLHF_MALLOC"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_FREE_BYTES = 1 << 30  # free memory kept mapped before the heap is trimmed


def keep_freed_memory(keep_free_bytes: int = KEEP_FREE_BYTES) -> bool:
    """One heap, no per-block mmap, trim only past ``keep_free_bytes`` of free memory; True when applied
    (glibc, and ``GRLHF_MALLOC`` is not ``default``)."""
    if os.environ.get(MALLOC_ENV, "keep").lower() == "default" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_TRIM_THRESHOLD, min(keep_free_bytes, 2**31 - 1)), (M_MMAP_MAX, 0), (M_ARENA_MAX, 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


__all__ = ["MALLOC_ENV", "keep_freed_memory"]
