"""``sofa bench mixers``: time and peak memory of every token mixer against the number of tokens N.

Settings (printed with the results and stored in the JSON): C = 64 channels, 2 heads of 32, batch 1, float32,
on the CPU unless told otherwise; SOFT with its stage-1 settings (landmark stride 8, depthwise 9×9 on V), either
with the released stride landmarks (m = N/64: grows with N) or bounded to 49 landmarks; SeT with 49 references;
exact softmax attention through ``scaled_dot_product_attention`` and materialised (softmax(QKᵀ)·V, which holds
the N×N matrix). Inference runs under ``torch.inference_mode`` in eval mode; the training step is a forward and
a backward (parameter and input gradients) in train mode. Each case runs in a fresh process.

Sequences (``sofa bench mixers --seq 1024,4096,...``): the same width, heads, batch and modes on N tokens in
1-D, with the LRA models' mixers (:mod:`sofa.models.lra`): SOFT and SOFT-Norm with 128 landmarks (segment means),
SeT with 128 references, pooling of width 3; softmax attention both ways; and, where the optional ``bench`` extra
is installed, the ``nystrom-attention`` package's Nyströmformer at the same 128 landmarks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from sofa.bench import measure, memory
from sofa.bench.isolation import run_isolated
from sofa.bench.measure import DTYPES

DIM, HEADS = 64, 2
DEFAULT_SIDES = (56, 112, 224, 448)
QUICK_SIDES = (8, 16)

#: name → (build_mixer kind, keyword arguments, one-line description)
CASES: Dict[str, tuple] = {
    "pool": ("pool", {}, "PoolFormer pooling (3x3 average - input)"),
    "soft_stride": (
        "soft",
        {"landmark_stride": 8, "dwconv_kernel": 9},
        "SOFT, released stride-8 landmarks (m = N/64 grows with N), dwconv 9x9",
    ),
    "soft_bounded": (
        "soft",
        {"landmark_stride": 8, "dwconv_kernel": 9, "max_landmarks": 49},
        "SOFT, stride-8 landmarks pooled to at most 49, dwconv 9x9",
    ),
    "set": ("set", {"num_refs": 49}, "SeT, 49 references, 32 anchors, 5 Sinkhorn iterations, LePE 3x3"),
    "sdpa": ("attn", {"impl": "sdpa"}, "softmax attention, F.scaled_dot_product_attention"),
    "softmax_materialized": ("attn", {"impl": "materialized"}, "softmax attention, softmax(QK^T)V materialised"),
}
DEFAULT_CASES = tuple(CASES)
#: the sequence (1-D) cases, as the LRA models build their mixers; "nystrom" is the nystrom-attention package
SEQ_LANDMARKS = 128
SEQ_CASES: Dict[str, tuple] = {
    "pool": ("pool", {}, "PoolFormer pooling along the sequence (width-3 average - input)"),
    "soft": (
        "soft",
        {"landmark_stride": 1, "max_landmarks": SEQ_LANDMARKS, "dwconv_kernel": 0, "sequence_only": True},
        "SOFT, 128 landmarks (segment means of the queries)",
    ),
    "soft_norm": (
        "soft_norm",
        {"landmark_stride": 1, "max_landmarks": SEQ_LANDMARKS, "dwconv_kernel": 0, "sequence_only": True},
        "SOFT-Norm, 128 landmarks",
    ),
    "set": (
        "set",
        {"num_refs": SEQ_LANDMARKS, "lepe": False},
        "SeT, 128 references, 32 anchors, 5 Sinkhorn iterations",
    ),
    "sdpa": ("attn", {"impl": "sdpa"}, "softmax attention, F.scaled_dot_product_attention"),
    "softmax_materialized": ("attn", {"impl": "materialized"}, "softmax attention, softmax(QK^T)V materialised"),
    "nystrom": (
        "nystrom",
        {"num_landmarks": SEQ_LANDMARKS},
        "nystrom-attention package (Nystromformer), 128 landmarks, 6 pseudo-inverse iterations, "
        "33-wide depthwise convolution on V",
    ),
}
DEFAULT_SEQ_CASES = tuple(SEQ_CASES)
DEFAULT_LENGTHS = (1024, 4096, 16384, 65536)
QUICK_LENGTHS = (64, 256)
#: the bounded-cost sequence mixers (pair slopes)
LINEAR_SEQ_CASES = ("pool", "soft", "soft_norm", "set", "nystrom")
#: cases whose cost is quadratic in N (for run-time extrapolation before running a size)
QUADRATIC = {"sdpa": 2.0, "softmax_materialized": 2.0, "soft_stride": 3.0}  # stride SOFT: Newton is O(m³), m ∝ N
#: a case whose one run is estimated above this many seconds gets fewer runs (3) and no flush comparison
SLOW_RUN_S = 8.0
#: interleaved flush-off / flush-on rounds per case (two per ABBA block, so 16 ratios), within twice the case's
#: budget (each round runs the case twice): enough that one slow second of the machine does not move the median
#: (docs/benchmarks.md, "Harness settings")
FLUSH_RUNS = 32
#: ... and more where runs are short: rounds until about this many seconds (at most FLUSH_MAX_RUNS rounds), so
#: that sub-millisecond cases, whose single runs the machine's noise moves most, get hundreds of pairs
FLUSH_FILL_S = 4.0
FLUSH_MAX_RUNS = 400
#: runs per turn in the slope pairs (run_pair), the last one timed
PAIR_BURST = 3
#: the bounded-cost mixers the linear-slope goal is about
LINEAR_CASES = ("pool", "soft_bounded", "set")


def estimate_memory(name: str, side: int, mode: str, batch: int = 1, length: Optional[int] = None) -> int:
    """A rough lower bound of the extra bytes a case needs, to skip what cannot fit before trying it (an image
    of side², or a sequence of ``length`` tokens)."""
    N = side * side if length is None else length
    act = batch * N * DIM * 4
    if name == "softmax_materialized":
        mats = 2 if mode == "inference" else 4  # scores and probabilities (and their gradients)
        return batch * HEADS * N * N * 4 * mats + 8 * act
    if name == "soft_stride" and length is None:
        m = (side // 8) ** 2
        mats = 3 if mode == "inference" else 8  # kernel, distances, exponent (and what autograd keeps)
        return batch * HEADS * N * m * 4 * mats + 8 * act
    return 16 * act * (1 if mode == "inference" else 3)


def nystrom_available() -> bool:
    """Whether the optional ``nystrom-attention`` package (the ``bench`` extra) is installed."""
    try:
        import nystrom_attention  # noqa: F401
    except ImportError:  # the package or its einops
        return False
    return True


NYSTROM_MISSING = "nystrom-attention is not installed (pip install 'sofa[bench]')"


def build(name: str, sequence: bool = False):
    from sofa.mixers import build_mixer

    kind, kw, _ = (SEQ_CASES if sequence else CASES)[name]
    if kind == "nystrom":
        from nystrom_attention import NystromAttention

        return NystromAttention(dim=DIM, dim_head=DIM // HEADS, heads=HEADS, **kw)
    return build_mixer(kind, DIM, None if kind in ("pool", "identity") else HEADS, **kw)


def tokens(spec: Dict, size: int) -> int:
    """N for one size of a case: side² for images, the length for sequences."""
    return size if spec.get("layout") == "sequence" else size * size


def _make_step(spec: Dict, side: int):
    """Build the mixer and its input for one size; returns (step, record fields)."""
    name, mode = spec["name"], spec["mode"]
    device = torch.device(spec.get("device", "cpu"))
    dtype = DTYPES[spec.get("dtype", "fp32")]
    torch.manual_seed(spec.get("seed", 0))
    random.seed(spec.get("seed", 0))
    sequence = spec.get("layout") == "sequence"
    N = tokens(spec, side)
    mixer = build(name, sequence).to(device)
    x = torch.randn(1, N, DIM, device=device) * float(spec.get("input_scale", 1.0))
    hw = None if sequence else (side, side)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    if sequence:
        landmarks = getattr(mixer, "max_landmarks", None) or getattr(mixer, "num_landmarks", None)
        rec: Dict = {"landmarks": min(N, landmarks) if isinstance(landmarks, int) else None}
    else:
        rec = {"landmarks": mixer.num_landmarks(hw) if hasattr(mixer, "num_landmarks") else None}

    def call(inp):
        return mixer(inp) if hw is None else mixer(inp, hw=hw)

    if mode == "inference":
        mixer.eval()

        def step():
            with torch.inference_mode(), autocast:
                return call(x)
    elif mode == "train":
        mixer.train()
        xg = x.clone().requires_grad_(True)
        grad = torch.randn(1, N, DIM, device=device)
        params = [p for p in mixer.parameters()]

        def step():
            for p in params:
                p.grad = None
            xg.grad = None
            with autocast:
                out = call(xg)
            out.backward(grad.to(out.dtype))
            return None
    else:
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    return step, rec


def run_pair(spec: Dict) -> Dict:
    """Time one mixer at two sizes with their runs interleaved (small, large, large, small, ...), in one process:
    a change of the machine's load during the measurement then hits both sizes alike, so the slope between them
    (the median over ABBA blocks of log(t_large/t_small)/log(N_large/N_small)) is far less noisy than the ratio
    of two separately measured medians. Each turn runs its size ``PAIR_BURST`` times and times the last run: the
    first call after the other size runs in that size's allocator and cache state, slower than the next ones
    (docs/benchmarks.md, "Harness settings"), which would bias slopes down."""

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    a, b = (int(s) for s in spec["sides"])
    t = measure.time_interleaved(
        {"small": _make_step(spec, a)[0], "large": _make_step(spec, b)[0]},
        repeats=int(spec["repeats"]),
        warmup=int(spec.get("warmup", 1)),
        device=device,
        burst=int(spec.get("burst", PAIR_BURST)),
    )
    times = [t["small"]["times_s"], t["large"]["times_s"]]
    per_run = [math.log(r) / math.log(tokens(spec, b) / tokens(spec, a)) for r in measure.paired_ratios(*times)]
    return {
        "sides": [a, b],
        "times_s": times,
        "medians_s": [statistics.median(t) for t in times],
        "slope": statistics.median(per_run),
        "slope_runs": per_run,
        "runs": len(per_run),
    }


def run_case(spec: Dict) -> Dict:
    """Measure one (mixer, N, mode) case in this process; ``spec`` is what :func:`bench_mixers` sends the worker."""
    side = int(spec["side"])
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    step, rec = _make_step(spec, side)

    budget = spec.get("budget_s")
    min_rep = int(spec.get("min_repeats", 1))
    if spec.get("flush_compare", True) and device.type == "cpu":

        def with_flush(flag: bool) -> Callable[[], object]:
            def f():
                with measure.flush_denormal(flag):
                    return step()

            return f

        # at least FLUSH_RUNS rounds where the budget allows: the ratio is a small effect to resolve
        t = measure.time_interleaved(
            {"off": with_flush(False), "on": with_flush(True)},
            repeats=max(spec["repeats"], FLUSH_RUNS),
            warmup=spec.get("warmup", 1),
            device=device,
            budget_s=None if budget is None else 2 * budget,
            min_repeats=min_rep,
            fill_s=spec.get("flush_fill_s", FLUSH_FILL_S),
            max_repeats=FLUSH_MAX_RUNS,
        )
        rec.update(t["off"])
        rec["flush_on"] = t["on"]
        # the median of the ABBA-paired ratios: a change of load hits both settings of a pair alike
        rec["flush_ratio"] = statistics.median(measure.paired_ratios(t["off"]["times_s"], t["on"]["times_s"]))
    else:
        rec.update(measure.time_case(step, spec, device))
    rec.update(memory.peak_memory(step, device))
    return rec


def slope(n1: float, t1: float, n2: float, t2: float) -> Optional[float]:
    """d log t / d log N between two sizes (1 = linear, 2 = quadratic)."""
    if not (n1 > 0 and n2 > 0 and t1 and t2) or n1 == n2 or t1 <= 0 or t2 <= 0:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def slopes(records: Sequence[Dict], key: str = "median_s") -> List[Dict]:
    """Slopes of log(key) against log(N) between successive measured sizes, per (mixer, mode)."""
    out = []
    groups: Dict[tuple, List[Dict]] = {}
    for r in records:
        if r.get("bench") == "mixers" and r.get("status") == "ok" and r.get(key):
            groups.setdefault((r.get("layout", "image"), r["mixer"], r["mode"]), []).append(r)
    for (layout, mixer, mode), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["N"])
        for a, b in itertools.pairwise(rs):
            out.append(
                {
                    "layout": layout,
                    "mixer": mixer,
                    "mode": mode,
                    "from_N": a["N"],
                    "to_N": b["N"],
                    "from_side": a.get("side"),
                    "to_side": b.get("side"),
                    "quantity": key,
                    "slope": slope(a["N"], a[key], b["N"], b[key]),
                }
            )
    return out


@dataclass(frozen=True)
class _Plan:
    """The settings of one :func:`bench_mixers` call that every case shares."""

    layout: str
    repeats: int
    warmup: int
    device: str
    dtype: str
    threads: Optional[int]
    isolate: bool
    budget_s: float
    max_run_s: float
    mem_limit: float
    flush_compare: bool
    input_scale: float
    pair_max_s: float
    pair_repeats: int
    flush_fill_s: float
    log: Callable[[str], None]

    @property
    def sequence(self) -> bool:
        return self.layout == "sequence"

    @property
    def table(self) -> Dict[str, tuple]:
        return SEQ_CASES if self.sequence else CASES

    def spec(self, name: str, mode: str) -> Dict:
        """The fields every worker spec of this plan carries."""
        return {
            "name": name,
            "mode": mode,
            "layout": self.layout,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "input_scale": self.input_scale,
        }


def bench_mixers(
    cases: Sequence[str] = DEFAULT_CASES,
    sides: Sequence[int] = DEFAULT_SIDES,
    modes: Sequence[str] = ("inference", "train"),
    repeats: int = 7,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: Optional[int] = None,
    isolate: bool = True,
    budget_s: float = 60.0,
    max_run_s: float = 60.0,
    mem_limit: Optional[float] = None,
    flush_compare: bool = True,
    input_scale: float = 1.0,
    pair_slopes: bool = True,
    pair_max_s: float = 5.0,
    pair_repeats: int = 9,
    flush_fill_s: float = FLUSH_FILL_S,
    layout: str = "image",
    log: Callable[[str], None] = print,
) -> List[Dict]:
    """Measure every (case, size, mode); returns one record per case (``status`` "ok", "skipped" or "failed").

    ``layout="image"``: ``sides`` are image sides (N = side²) and ``cases`` come from :data:`CASES`;
    ``layout="sequence"``: ``sides`` are sequence lengths (N = length) and ``cases`` come from :data:`SEQ_CASES`.
    """
    _check_cases(layout, cases)
    plan = _Plan(
        layout=layout,
        repeats=repeats,
        warmup=warmup,
        device=device,
        dtype=dtype,
        threads=threads,
        isolate=isolate,
        budget_s=budget_s,
        max_run_s=max_run_s,
        mem_limit=_default_mem_limit() if mem_limit is None else mem_limit,
        flush_compare=flush_compare,
        input_scale=input_scale,
        pair_max_s=pair_max_s,
        pair_repeats=pair_repeats,
        flush_fill_s=flush_fill_s,
        log=log,
    )
    records: List[Dict] = []
    for mode in modes:
        for name in cases:
            records.extend(_measure_sizes(plan, name, mode, sorted(sides)))
    if pair_slopes:
        linear = LINEAR_SEQ_CASES if plan.sequence else LINEAR_CASES
        for mode in modes:
            for name in [c for c in cases if c in linear]:
                records.extend(_measure_pairs(plan, name, mode, records))
    return records


def _check_cases(layout: str, cases: Sequence[str]) -> None:
    if layout not in ("image", "sequence"):
        raise ValueError(f"layout must be 'image' or 'sequence', got {layout!r}")
    table = SEQ_CASES if layout == "sequence" else CASES
    unknown = [c for c in cases if c not in table]
    if unknown:
        raise ValueError(f"unknown {layout} mixer case(s) {unknown}; choose from {sorted(table)}")


def _default_mem_limit() -> float:
    """80 % of the available memory (16 GB where that is unknown)."""
    avail = memory.available_memory()
    return 0.8 * avail if avail else 16e9


def _measure_sizes(plan: _Plan, name: str, mode: str, sides: Sequence[int]) -> List[Dict]:
    """One record per size of one (case, mode), smallest first; each size's run time is estimated from the
    previous one to skip what would run too long."""
    records: List[Dict] = []
    prev: Optional[Dict] = None
    for side in sides:
        base = _base_record(plan, name, mode, side)
        est = _estimate_s(name, base["N"], prev)
        reason = _skip_reason(plan, name, mode, side, base["N"], est, prev)
        if reason is not None:
            rec = dict(base, status="skipped", reason=reason)
        else:
            rec = _run_size(plan, base, name, mode, side, slow=est is not None and est > SLOW_RUN_S)
            prev = rec
        records.append(rec)
        plan.log(_line(rec))
    return records


def _base_record(plan: _Plan, name: str, mode: str, side: int) -> Dict:
    N = side if plan.sequence else side * side
    base = {
        "bench": "mixers",
        "layout": plan.layout,
        "mixer": name,
        "description": plan.table[name][2],
        "mode": mode,
        "side": None if plan.sequence else side,
        "N": N,
        "C": DIM,
        "heads": HEADS,
        "head_dim": DIM // HEADS,
        "batch": 1,
        "dtype": plan.dtype,
        "device": plan.device,
        "input_scale": plan.input_scale,
    }
    if plan.sequence:
        base["length"] = N
    return base


def _estimate_s(name: str, N: int, prev: Optional[Dict]) -> Optional[float]:
    """Seconds per run at N, extrapolated from the previous size's median (None where that did not run)."""
    if prev is None or prev.get("status") != "ok":
        return None
    return prev["median_s"] * (N / prev["N"]) ** QUADRATIC.get(name, 1.0)


def _skip_reason(
    plan: _Plan, name: str, mode: str, side: int, N: int, est: Optional[float], prev: Optional[Dict]
) -> Optional[str]:
    """Why a size is not run (a missing package, too little memory, too long a run), or None to run it."""
    if plan.table[name][0] == "nystrom" and not nystrom_available():
        return NYSTROM_MISSING
    need = estimate_memory(name, side, mode, length=N if plan.sequence else None)
    if plan.device == "cpu" and need > plan.mem_limit:
        return f"would need at least {need / 1e9:.1f} GB (limit {plan.mem_limit / 1e9:.1f} GB)"
    if est is not None and est > plan.max_run_s:
        p = QUADRATIC.get(name, 1.0)
        return f"estimated {est:.0f} s per run (N^{p:g} from {_size(prev)}, limit {plan.max_run_s:.0f} s)"
    return None


def _run_size(plan: _Plan, base: Dict, name: str, mode: str, side: int, slow: bool) -> Dict:
    """Measure one size (in a fresh process where the plan isolates); a failure becomes a "failed" record."""
    spec = dict(
        plan.spec(name, mode),
        side=side,
        repeats=plan.repeats,
        warmup=plan.warmup,
        budget_s=plan.budget_s,
        min_repeats=min(3 if slow else 5, plan.repeats),
        flush_compare=plan.flush_compare and not slow,
        flush_fill_s=plan.flush_fill_s,
    )
    try:
        result = run_isolated("mixer", spec) if plan.isolate else run_case(spec)
        return dict(base, status="ok", **result)
    except Exception as err:  # a case that fails is reported, not fatal to the run
        return dict(base, status="failed", reason=f"{type(err).__name__}: {err}"[:500])


def _measure_pairs(plan: _Plan, name: str, mode: str, records: Sequence[Dict]) -> List[Dict]:
    """Interleaved slope records between successive measured sizes of one (case, mode) (:func:`run_pair`)."""
    ok = sorted(
        (r for r in records if r["mixer"] == name and r["mode"] == mode and r["status"] == "ok"),
        key=lambda r: r["N"],
    )
    out = []
    for ra, rb in itertools.pairwise(ok):
        if rb["median_s"] > plan.pair_max_s:
            continue
        rec = _run_pair_record(plan, name, mode, ra, rb)
        out.append(rec)
        if rec["status"] == "ok":
            plan.log(
                f"{mode:9s} {name:21s} slope {_size(ra)}→{_size(rb)} (interleaved, {rec['runs']} "
                f"runs): {rec['slope']:.2f}"
            )
    return out


def _run_pair_record(plan: _Plan, name: str, mode: str, ra: Dict, rb: Dict) -> Dict:
    sizes = [ra["N"], rb["N"]] if plan.sequence else [ra["side"], rb["side"]]
    spec = dict(plan.spec(name, mode), sides=sizes, warmup=1, repeats=plan.pair_repeats)
    rec = {
        "bench": "mixer_pair",
        "layout": plan.layout,
        "mixer": name,
        "mode": mode,
        "from_side": ra["side"],
        "to_side": rb["side"],
        "from_N": ra["N"],
        "to_N": rb["N"],
    }
    try:
        res = run_isolated("mixer_pair", spec) if plan.isolate else run_pair(spec)
        return dict(rec, status="ok", **res)
    except Exception as err:  # a pair that fails is reported, not fatal to the run
        return dict(rec, status="failed", reason=f"{type(err).__name__}: {err}")


def _size(r: Dict) -> str:
    """A record's size as the tables print it: ``side²`` for an image, ``N tokens`` for a sequence."""
    return f"{r['side']}²" if r.get("side") else f"{r['N']:,} tokens"


def _line(r: Dict) -> str:
    head = f"{r['mode']:9s} {r['mixer']:21s} N={r['N']:>7d} ({_size(r)})"
    if r["status"] != "ok":
        return f"{head}  {r['status']}: {r.get('reason', '')}"
    flush = f"  flush on/off {r['flush_ratio']:.2f}" if r.get("flush_ratio") else ""
    lm = f"  m={r['landmarks']}" if r.get("landmarks") else ""
    return (
        f"{head}  {measure.fmt_time(r['median_s']):>9s} ({r['runs']} runs)  peak "
        f"{measure.fmt_bytes(r.get('peak_mem_bytes')):>9s}{flush}{lm}"
    )
