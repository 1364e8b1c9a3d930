"""A CPU allocator setting for processes that exist to embed (glibc malloc keeps freed memory)."""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, <malloc.h>


def keep_freed_memory() -> bool:
    """Have glibc malloc reuse freed heap memory instead of mapping and returning it per tensor.

    By default glibc serves blocks above 32 MiB with fresh ``mmap`` pages and trims the heap,
    so every forward pass page-faults its large activations in anew; on CPU that costs as much
    as the int8 matrix products (``benchmarks/encode_bench.py``, ``-malloc`` rows). Same effect
    as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``; the process keeps its peak memory.
    For processes that exist to embed (``concat-embed embed``). Returns False where the C
    library is not glibc (nothing changed).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    done = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    logger.info("glibc malloc: mmap off, heap trimming off (%s)", "applied" if done else "refused")
    return done
