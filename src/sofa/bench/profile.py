"""What bounds a forward pass: torch.profiler's operator times, grouped into a few kinds of work.

``profile_step(fn)`` runs ``fn`` once under ``torch.profiler`` and returns the wall time, the self time of every
operator summed by kind, and what is left over (the wall time no operator accounts for: Python, dispatch and
framework overhead between operators). Kinds:

* matmul: GEMMs and convolutions that are GEMMs at heart (1×1 and dense convolutions, linear layers, batched
  products, fused attention);
* depthwise conv / pooling: per-channel spatial filters, memory-bound;
* elementwise & norms: activations, normalisations, exponentials, additions, reductions, copies between
  layouts — everything that streams memory;
* other operators.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

MATMUL = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_attention_math",
    "aten::addbmm",
    "aten::dot",
    "aten::mv",
)
SPATIAL = ("aten::avg_pool2d", "aten::max_pool2d", "aten::adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d")
ELEMENTWISE_HINTS = (
    "add",
    "sub",
    "mul",
    "div",
    "exp",
    "gelu",
    "norm",
    "copy",
    "clamp",
    "threshold",
    "sum",
    "amax",
    "max",
    "pow",
    "log",
    "softmax",
    "cat",
    "where",
    "fill",
    "relu",
    "sqrt",
    "mean",
    "contiguous",
    "_to_copy",
    "index",
    "stack",
    "erf",
    "tanh",
    "masked",
    "rsqrt",
    "var",
    "neg",
)


def _kind(name: str, shapes) -> str:
    if name in MATMUL:
        return "matmul"
    if "convolution" in name or "conv2d" in name or "conv3d" in name or "conv1d" in name:
        # a depthwise filter (weight (C, 1, k, k), k > 1) is memory-bound; other convolutions are GEMMs
        try:
            w = shapes[1]
            if len(w) == 4 and w[1] == 1 and w[2] * w[3] > 1:
                return "depthwise conv / pooling"
        except (IndexError, TypeError):
            pass
        return "matmul"
    if name in SPATIAL:
        return "depthwise conv / pooling"
    low = name.lower()
    if any(h in low for h in ELEMENTWISE_HINTS):
        return "elementwise & norms"
    return "other operators"


def profile_step(fn: Callable[[], object]) -> Dict[str, object]:
    """One profiled call of ``fn``: wall time and operator self time by kind (seconds)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    by_kind: Dict[str, float] = {}
    top: Dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        # only leaf-level time: self time, so nested operators are not counted twice
        k = _kind(e.key, e.input_shapes)
        by_kind[k] = by_kind.get(k, 0.0) + e.self_cpu_time_total / 1e6
        top[e.key] = top.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
    ops = sum(by_kind.values())
    by_kind["overhead (wall - operators)"] = max(wall - ops, 0.0)
    top_ops = dict(sorted(top.items(), key=lambda kv: -kv[1])[:8])
    return {"wall_s": wall, "by_kind_s": by_kind, "top_ops_s": top_ops}


def bound_by(p: Dict[str, object]) -> str:
    """The kind of work that takes the largest share of the wall time, with its share."""
    kinds = p["by_kind_s"]
    k = max(kinds, key=kinds.get)
    return f"{k} ({100 * kinds[k] / p['wall_s']:.0f}%)"
