"""CPU allocator settings (glibc malloc) for a process that exists to do one thing: embed, or train."""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (whose ``mallopt`` these settings are), else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def keep_freed_memory() -> bool:
    """Have glibc malloc reuse freed heap memory instead of mapping and returning it per tensor.

    By default glibc serves blocks above 32 MiB with fresh ``mmap`` pages and trims the heap,
    so every forward pass page-faults its large activations in anew; on CPU that costs as much
    as the int8 matrix products (``benchmarks/encode_bench.py``, ``-malloc`` rows). Same effect
    as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``; the process keeps its peak memory.
    For processes that exist to embed (``concat-embed embed``). Returns False where the C
    library is not glibc (nothing changed).
    """
    libc = _glibc()
    if libc is None:
        return False
    done = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    logger.info("glibc malloc: mmap off, heap trimming off (%s)", "applied" if done else "refused")
    return done


def return_freed_memory() -> bool:
    """Have glibc malloc serve every block above 128 KiB with its own mapping, returned to the system when freed.

    glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed, so after a few training steps
    it serves activations of every size from the heap, where blocks of changing sizes fragment it and the process
    keeps what it freed. Distilling into all-MiniLM-L6-v2 (batches of 32 texts of 5 to 256 tokens) held 2.84 GB
    between steps and peaked at 3.59 GB in its first 300 steps; with the threshold fixed, 1.23 GB and 2.65 GB
    (``docs/distillation.md``). Same effect as ``MALLOC_MMAP_THRESHOLD_=131072``. For processes that exist to train
    (``concat-embed distill``). Returns False where the C library is not glibc (nothing changed).
    """
    libc = _glibc()
    if libc is None:
        return False
    done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    logger.info("glibc malloc: blocks above %d bytes mapped and returned when freed (%s)",
                MMAP_THRESHOLD, "applied" if done else "refused")  # fmt: skip
    return done
