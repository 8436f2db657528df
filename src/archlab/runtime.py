"""Process-level runtime settings for long CPU jobs (training, compare, benchmarks)."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Keep freed tensor memory in glibc's heap instead of returning it to the OS.

    By default glibc serves allocations above ~32 MB with fresh ``mmap`` pages and unmaps them
    on free, so every training step page-faults its activations and gradients in again: on a
    2-core CPU that costs 10-30 % of a step (``bench/train_step.py --tune-malloc`` shows it).
    PyTorch's CPU performance guide recommends a caching allocator (jemalloc/tcmalloc) for the
    same reason; raising glibc's mmap and trim thresholds gets most of that benefit with no
    extra dependency. Returns True if applied (glibc on Linux), False otherwise; set
    ``ARCHLAB_NO_MALLOC_TUNING=1`` to skip.
    """
    if os.environ.get("ARCHLAB_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1  # glibc caps it at 32 MB on 64-bit
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 34) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False
