"""One benchmark case in a fresh process: ``python -m sofa.bench.worker KIND SPEC_JSON``.

A fresh process per case keeps the peak-memory reading honest (nothing left resident by an earlier case) and the
cases independent (caches, thread pools, oneDNN
primitives). The result is printed as one JSON line after ``RESULT_MARK``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict

RESULT_MARK = "SOFA_BENCH_RESULT "


def run_isolated(kind: str, spec: Dict, timeout: float | None = None) -> Dict:
    """Run one case of ``kind`` ("mixer", "mixer_pair", "model", "model_pair" or "gemm") in a fresh Python process; returns its record."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "sofa.bench.worker", kind, json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
    raise RuntimeError(f"worker {why}: {' | '.join(tail)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, spec = argv[0], json.loads(argv[1])
    from sofa.bench import measure

    if kind == "mixer":
        from sofa.bench.mixers import run_case

        result = run_case(spec)
    elif kind == "mixer_pair":
        from sofa.bench.mixers import run_pair

        result = run_pair(spec)
    elif kind == "model":
        from sofa.bench.models import run_case

        result = run_case(spec)
    elif kind == "model_pair":
        from sofa.bench.models import run_pair

        result = run_pair(spec)
    elif kind == "gemm":
        import torch

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        result = measure.matmul_peak(spec.get("device", "cpu"), size=int(spec.get("size", 2048)),
                                     repeats=int(spec.get("repeats", 5)))
    else:
        raise SystemExit(f"unknown case kind {kind!r}")
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
