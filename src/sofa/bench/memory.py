"""Memory measurements: the extra memory one call needs at its peak, and what the process and the machine hold.

Peak memory on the CPU: PyTorch's CPU allocator is plain ``malloc``, which no Python-level hook sees, so
:func:`peak_memory` reads the kernel's own account of the process instead. After the timed runs (which use
``malloc`` as configured by default, as a user's process does), the free heap is returned to the system
(``malloc_trim(0)``) and ``malloc`` is told to serve every block from 64 KiB up with its own ``mmap``
(``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc from raising that threshold as it goes), so that a freed
tensor leaves the resident set at once; then the high-water mark is reset (``/proc/self/clear_refs``, value 5),
the call runs once, and the result is the high-water mark (``VmHWM``) minus the resident set just before the
call (``VmRSS``). That is the extra memory the call needed at its peak: temporaries and its output, not the
model's weights or the input, which were already resident. Each benchmark case runs in a fresh process
(:mod:`sofa.bench.isolation`), so nothing cached by an earlier case is counted or missing. On CUDA the same
quantity is ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory allocated before the call.
"""

from __future__ import annotations

import gc
from typing import Callable, Dict, Optional

import torch

from sofa.bench.measure import synchronize
from sofa.runtime import M_MMAP_THRESHOLD, glibc

__all__ = [
    "MEM_METHOD_CPU",
    "MEM_METHOD_CUDA",
    "peak_memory",
    "process_status_kib",
    "reset_peak_rss",
    "configure_malloc",
    "available_memory",
]

MEM_METHOD_CPU = (
    "fresh process per case; after timing, malloc_trim(0) and malloc mmap threshold 64 KiB (mallopt); "
    "/proc/self/clear_refs=5 resets VmHWM; peak = VmHWM after one call - VmRSS before it (extra memory at the "
    "peak, output included)"
)
MEM_METHOD_CUDA = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory allocated before"

_mallopt_done = False


def configure_malloc(threshold: int = 64 * 1024) -> bool:
    """Return free heap memory to the system and serve blocks ≥ ``threshold`` bytes by mmap from now on, so that
    freed tensors leave the resident set (glibc only; call it after any timing: it makes allocation slower)."""
    global _mallopt_done
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    if not _mallopt_done:
        _mallopt_done = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    return _mallopt_done


def process_status_kib(field: str) -> Optional[int]:
    """A memory field of ``/proc/self/status`` in KiB (``"VmRSS"``: resident now, ``"VmHWM"``: the high-water mark
    of the resident set), or None where there is no such file or field."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's resident-set high-water mark (``VmHWM``) to its current resident set; False where the
    kernel does not allow it (``/proc/self/clear_refs`` not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> Dict[str, object]:
    """Extra memory (bytes) at the peak of one call of ``fn`` (see the module docstring for the method)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return {"peak_mem_bytes": int(peak), "mem_method": MEM_METHOD_CUDA}
    configure_malloc()
    if not reset_peak_rss():
        return {"peak_mem_bytes": None, "mem_method": "unavailable: /proc/self/clear_refs is not writable"}
    rss = process_status_kib("VmRSS")
    out = fn()
    hwm = process_status_kib("VmHWM")
    del out
    if rss is None or hwm is None:
        return {"peak_mem_bytes": None, "mem_method": "unavailable: no /proc/self/status"}
    return {"peak_mem_bytes": int(max(hwm - rss, 0) * 1024), "mem_method": MEM_METHOD_CPU}


def available_memory() -> Optional[int]:
    """Bytes the kernel says are available now (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
