"""Running one benchmark case in a fresh Python process (the process side is :mod:`sofa.bench.worker`).

A fresh process per case keeps the peak-memory reading honest (nothing left resident by an earlier case) and the
cases independent (caches, thread pools, oneDNN primitives). The worker prints its result as one JSON line after
:data:`RESULT_MARK`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict

__all__ = ["RESULT_MARK", "run_isolated"]

RESULT_MARK = "SOFA_BENCH_RESULT "


def run_isolated(kind: str, spec: Dict, timeout: float | None = None) -> Dict:
    """Run one case of ``kind`` ("mixer", "mixer_pair", "model", "model_pair" or "gemm") in a fresh Python
    process (``python -m sofa.bench.worker KIND SPEC_JSON``); returns its record."""
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "sofa.bench.worker", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
    raise RuntimeError(f"worker {why}: {' | '.join(tail)}")
