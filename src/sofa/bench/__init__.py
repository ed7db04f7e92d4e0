"""Benchmarks: token mixers against the number of tokens, whole models against timm's (``sofa bench``).

These print and store numbers; they are not timed tests. See ``docs/benchmarks.md`` for the method and results.
"""

from sofa.bench.measure import machine_info, matmul_peak, time_call, time_interleaved
from sofa.bench.memory import peak_memory
from sofa.bench.mixers import bench_mixers, slope, slopes
from sofa.bench.models import bench_models

__all__ = [
    "bench_mixers",
    "bench_models",
    "slope",
    "slopes",
    "time_call",
    "time_interleaved",
    "peak_memory",
    "matmul_peak",
    "machine_info",
]
