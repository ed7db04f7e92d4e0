"""sofa.runtime: the opt-in malloc setting that keeps freed memory for reuse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# three 12.8 MB tensors at once, freed, ten times. glibc's default (dynamic thresholds) may or may not keep such
# blocks, depending on the heap's history, so the probe starts from its static default, a 128 KiB mmap
# threshold, under which every round faults its pages anew; keep_freed_memory must override that
PROBE = """
import ctypes, ctypes.util, resource, sys, torch
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
assert libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
if sys.argv[1] == "call":
    import sofa.runtime
    assert sofa.runtime.keep_freed_memory() and sofa.runtime.freed_memory_kept()
elif sys.argv[1] == "env":
    import sofa
    assert sofa.runtime.freed_memory_kept()
def rounds(n):
    for _ in range(n):
        ts = [torch.ones(1, 50176, 64) for _ in range(3)]
        del ts
rounds(6)  # the heap settles in a few rounds
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env=None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, **(env or {})),
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_stops_page_faults_of_repeated_large_tensors():
    page_mb = 4096 / 1e6
    default = _faults("default") * page_mb
    assert default > 100, f"the probe should fault its tensors without the setting ({default:.0f} MB faulted)"
    assert _faults("call") * page_mb < 5  # kept: the same ten rounds reuse the heap
    assert _faults("env", {"SOFA_KEEP_FREED_MEMORY": "1"}) * page_mb < 5  # the same from the environment
