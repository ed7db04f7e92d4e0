"""Measuring one thing well: wall-clock medians, the machine's matmul peak, and what ran where.

Time: ``time_call`` runs a callable after warm-up and returns every run's wall-clock time (CUDA work is
synchronised). The median is what the tables print; every run is kept in the JSON. Peak memory is
:mod:`sofa.bench.memory`'s.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

#: the ``--dtype`` names of the benchmarks → torch dtypes (float32 runs as is, the others under autocast)
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    budget_s: Optional[float] = None,
    min_repeats: int = 1,
) -> Dict[str, object]:
    """Run ``fn`` ``warmup`` times, then up to ``repeats`` timed times; returns the times and their median.

    With ``budget_s``, the number of timed runs is cut so that they take about that long in all (estimated from
    the last warm-up run), but never below ``min_repeats``; the JSON records how many ran.
    """
    t_warm = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        t_warm = time.perf_counter() - t0
    n = repeats
    if budget_s is not None and t_warm is not None and t_warm > 0:
        n = max(min_repeats, min(repeats, int(budget_s / t_warm)))
    times: List[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "runs": len(times),
        "warmup": warmup,
        "warmup_s": t_warm,
    }


def time_case(
    fn: Callable[[], object], spec: Dict, device: torch.device | str, warmup: int = 1, min_repeats: int = 1
) -> Dict[str, object]:
    """:func:`time_call` with a benchmark case's settings: ``spec``'s ``repeats`` (default 5), ``warmup``,
    ``budget_s`` and ``min_repeats`` where it has them, else the given defaults; never more than ``repeats``."""
    repeats = int(spec.get("repeats", 5))
    return time_call(
        fn,
        repeats=repeats,
        warmup=int(spec.get("warmup", warmup)),
        device=device,
        budget_s=spec.get("budget_s"),
        min_repeats=min(int(spec.get("min_repeats", min_repeats)), repeats),
    )


def time_interleaved(
    fns: Dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    budget_s: Optional[float] = None,
    min_repeats: int = 1,
    fill_s: Optional[float] = None,
    max_repeats: int = 400,
    burst: int = 1,
) -> Dict[str, Dict[str, object]]:
    """Like :func:`time_call` for several variants of one case, run in turn (A B A B ...), so that a change in the
    machine's load during the measurement hits all of them alike: the fair way to compare two settings.
    ``fill_s``: run more rounds than ``repeats`` where they are cheap, until about that many seconds of rounds
    (at most ``max_repeats``, and within ``budget_s``): a fast case then gets hundreds of pairs.
    ``burst``: each turn runs a variant that many times in a row and times the last run only, so that no timed
    run directly follows another variant's (whose memory state can slow the first run after it)."""
    t_warm = 0.0
    for _ in range(warmup):
        for fn in fns.values():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            t_warm += time.perf_counter() - t0
    t_warm = t_warm / max(warmup, 1)
    n = repeats
    if fill_s is not None and warmup and t_warm > 0:
        n = max(n, min(max_repeats, int(fill_s / t_warm)))
        n += n % 2  # whole ABBA blocks
    if budget_s is not None and warmup and t_warm > 0:
        n = max(min_repeats, min(n, int(budget_s / t_warm)))
    times: Dict[str, List[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(n):
        # A B, then B A, ...: a run right after another is often faster (threads awake, caches warm), and
        # alternating the order cancels that in ``paired_ratios``
        for k in order if r % 2 == 0 else order[::-1]:
            for _ in range(burst - 1):
                fns[k]()
            synchronize(device)
            t0 = time.perf_counter()
            fns[k]()
            synchronize(device)
            times[k].append(time.perf_counter() - t0)
    return {
        k: {"times_s": v, "median_s": statistics.median(v), "runs": len(v), "warmup": warmup} for k, v in times.items()
    }


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> List[float]:
    """t_b / t_a per block of two rounds of :func:`time_interleaved` (A B then B A: an ABBA design, which
    cancels both a steady drift of the machine's speed and any advantage of running second); one ratio per
    round where only one round is there."""
    if len(a) < 2:
        return [y / x for x, y in zip(a, b, strict=True)]
    return [(b[i] + b[i + 1]) / (a[i] + a[i + 1]) for i in range(0, len(a) - 1, 2)]


@contextlib.contextmanager
def flush_denormal(enabled: bool):
    """Turn the CPU's flush-to-zero of subnormal floats on or off for the duration (restoring the default off)."""
    torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def matmul_peak(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5
) -> Dict[str, object]:
    """The machine's measured matmul rate: FLOP/s of a size×size×size GEMM (median of ``repeats``), the best of
    the libraries PyTorch can send it to.

    ``torch.mm`` goes to the BLAS (MKL in x86 wheels, which on AMD CPUs runs AVX2 code: about half the vector
    width of AVX-512); on the CPU the same GEMM is also timed through oneDNN (:func:`sofa.ops.linear.linear`'s
    oneDNN route: a 1×1 convolution of a channels-last (1, size, size, 1) map, the path of the models' linear
    layers, through oneDNN's own entry point at any thread count). ``flops_per_s``
    is the faster of the two, and each is reported.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2.0 * size**3
    candidates = {"blas": lambda: a @ b}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        from sofa.ops.linear import linear

        bt = b.t().contiguous()  # (N, K): a·b = linear(a, bᵀ), a 1×1 convolution of a's rows through oneDNN
        candidates["onednn"] = lambda: linear(a, bt, impl="onednn")
    out: Dict[str, object] = {"size": size, "dtype": str(dtype).replace("torch.", "")}
    for name, fn in candidates.items():
        t = time_call(fn, repeats=repeats, warmup=2, device=device)
        out[name] = {
            "median_s": t["median_s"],
            "flops_per_s": flops / t["median_s"],
            "best_flops_per_s": flops / min(t["times_s"]),
        }
    best = max(candidates, key=lambda k: out[k]["flops_per_s"])
    out.update(
        library=best,
        median_s=out[best]["median_s"],
        flops_per_s=out[best]["flops_per_s"],
        best_flops_per_s=out[best]["best_flops_per_s"],
    )
    return out


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    return (_cpuinfo_field("flags") or "").split()


def machine_info(device: torch.device | str = "cpu") -> Dict[str, object]:
    """Where and with what a benchmark ran: written at the top of every JSON file."""
    device = torch.device(device)
    info: Dict[str, object] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bf16_hardware": any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16")),
        "device": str(device),
    }
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("MemTotal", "MemAvailable")):
                    k, v = line.split(":")
                    info[k.strip().lower()] = int(v.split()[0]) * 1024
    except OSError:
        pass
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def fmt_time(t: Optional[float]) -> str:
    if t is None:
        return "-"
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"
