"""Process-wide CPU settings that are the user's choice rather than the library's default (the ``sofa`` command,
which owns its process, turns :func:`keep_freed_memory` on: ``sofa.cli.main``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2)
_MMAP_MAX = 32 * 2**20
ENV = "SOFA_KEEP_FREED_MEMORY"
_kept = [False]


def glibc():
    """The C library with glibc's ``mallopt`` and ``malloc_trim``, or None where they are missing (other C
    libraries, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory for the next allocation instead of returning it to the system.

    By default glibc often returns freed blocks of a few MB and up to the kernel (a dynamic mmap threshold, and
    trimming of the heap's top beyond twice that; whether it does depends on the heap's history), so a large
    tensor that is allocated on every call (the token maps of a mixer at high resolution) gets fresh pages: a
    page fault per 4 KiB, each page zeroed by the kernel: a large share of the time of bounded SOFT and SeT at
    high resolution (docs/benchmarks.md has the measurements). After this call blocks up to 32 MiB come from the
    heap, which is never trimmed, so steady-state calls fault no pages. The price: the process keeps its peak
    heap resident. It cannot be undone in the process.

    glibc only: returns False where ``mallopt`` is missing (other C libraries, macOS, Windows), True once set.
    ``SOFA_KEEP_FREED_MEMORY=1`` in the environment calls it when sofa is imported; the ``sofa`` command sets it
    for itself and its worker processes unless it is ``0`` (docs/switches.md).
    """
    libc = glibc()
    if libc is None:
        return False
    # setting either turns glibc's dynamic thresholds off, so both are set
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, _MMAP_MAX)) & bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    _kept[0] = _kept[0] or ok
    return ok


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has taken effect in this process."""
    return _kept[0]


def requested_by_environment() -> bool:
    """Whether ``SOFA_KEEP_FREED_MEMORY`` asks for :func:`keep_freed_memory` (set and not ``0``)."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def apply_environment() -> None:
    """Keep freed memory (:func:`keep_freed_memory`) when ``SOFA_KEEP_FREED_MEMORY`` asks for it."""
    if requested_by_environment():
        keep_freed_memory()
