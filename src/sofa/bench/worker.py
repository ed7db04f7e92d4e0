"""One benchmark case in this process, as a fresh process runs it: ``python -m sofa.bench.worker KIND SPEC_JSON``.

:func:`sofa.bench.isolation.run_isolated` starts it; the result is printed as one JSON line after
:data:`sofa.bench.isolation.RESULT_MARK`.
"""

from __future__ import annotations

import json
import sys

import torch

from sofa.bench import measure, mixers, models, text
from sofa.bench.isolation import RESULT_MARK


def run_gemm(spec: dict) -> dict:
    """The machine's matmul peak (:func:`sofa.bench.measure.matmul_peak`) with the spec's device, threads, size."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    return measure.matmul_peak(
        spec.get("device", "cpu"), size=int(spec.get("size", 2048)), repeats=int(spec.get("repeats", 5))
    )


#: case kind → the function that measures one case of it in this process
CASE_RUNNERS = {
    "mixer": mixers.run_case,
    "mixer_pair": mixers.run_pair,
    "model": models.run_case,
    "model_pair": models.run_pair,
    "gemm": run_gemm,
    "text": text.run_case,
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, spec = argv[0], json.loads(argv[1])
    if kind not in CASE_RUNNERS:
        raise SystemExit(f"unknown case kind {kind!r}")
    result = CASE_RUNNERS[kind](spec)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
