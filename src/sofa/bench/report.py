"""Tables (Markdown), the goals of the benchmark issue checked against a run, the JSON file and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sofa.bench import measure
from sofa.bench.mixers import LINEAR_CASES, LINEAR_SEQ_CASES, slopes

# The goals, as the benchmark issue states them (all in one run, on one machine).
SLOPE_GOAL = 1.15
#: sequences (the LRA issue): the slope between the two longest lengths, and at 65,536 tokens SOFT and SeT at
#: least 100× faster than SDPA
SEQ_SLOPE_GOAL = 1.1
SEQ_SPEEDUP_GOAL = (65536, 100.0)
SPEEDUP_GOALS = {224: 50.0, 56: 2.0}
FLUSH_GOAL = 0.10
POOLFORMER_GOAL = 1.2


def _by(records, **kw) -> List[Dict]:
    return [r for r in records if all(r.get(k) == v for k, v in kw.items())]


def _one(records, **kw) -> Optional[Dict]:
    rs = [r for r in _by(records, **kw) if r.get("status") == "ok"]
    return rs[0] if rs else None


def _label(N: int, side: Optional[int]) -> str:
    """A size in a table: ``side²`` for an image, ``N`` for a sequence."""
    return f"{side}²" if side else f"{N:,}"


def _sizes(rs: Sequence[Dict]) -> List[tuple]:
    """The distinct (N, side) of records, by N (side None for sequences)."""
    return sorted({(r["N"], r.get("side")) for r in rs}, key=lambda t: t[0])


def mixer_table(records: Sequence[Dict], mode: str) -> str:
    rs = _by(records, bench="mixers", mode=mode)
    if not rs:
        return ""
    sizes = _sizes(rs)
    names = list(dict.fromkeys(r["mixer"] for r in rs))
    head = "| mixer | " + " | ".join(f"{s}² = {n:,} tokens" if s else f"{n:,} tokens" for n, s in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    for name in names:
        cells = []
        for n, s in sizes:
            r = next((r for r in rs if r["mixer"] == name and r["N"] == n and r.get("side") == s), None)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(f"{r['status']}: {r.get('reason', '')}")
            else:
                runs = "" if r["runs"] >= 5 else f" ({r['runs']} run{'s' if r['runs'] > 1 else ''})"
                lm = f", m={r['landmarks']}" if r.get("landmarks") and name.startswith("soft") else ""
                cells.append(
                    f"{measure.fmt_time(r['median_s'])}{runs} / {measure.fmt_bytes(r.get('peak_mem_bytes'))}{lm}"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slope_grid(rows: Sequence[Dict]) -> str:
    """A mixer × (size pair) markdown table of the ``slope`` of each row (rows hold mixer, mode, from_N, to_N,
    from_side, to_side (None for sequences) and slope; a missing or None slope is an empty cell)."""

    def pair(r):
        return r["from_N"], r["to_N"], r.get("from_side"), r.get("to_side")

    pairs = sorted({pair(r) for r in rows}, key=lambda t: (t[0], t[1]))
    keys = list(dict.fromkeys((r["mixer"], r["mode"]) for r in rows))
    by_cell = {(r["mixer"], r["mode"], *pair(r)): r.get("slope") for r in rows}
    lines = [
        "| mixer | mode | " + " | ".join(f"{_label(a, sa)}→{_label(b, sb)}" for a, b, sa, sb in pairs) + " |",
        "|---|---" + "|---" * len(pairs) + "|",
    ]
    for mixer, mode in keys:
        cells = [by_cell.get((mixer, mode, *p)) for p in pairs]
        lines.append(f"| {mixer} | {mode} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def slope_table(records: Sequence[Dict], key: str = "median_s") -> str:
    sl = slopes(records, key)
    return _slope_grid(sl) if sl else ""


def pair_slope_table(records: Sequence[Dict]) -> str:
    rs = [r for r in records if r.get("bench") == "mixer_pair" and r.get("status") == "ok"]
    return _slope_grid(rs) if rs else ""


def flush_table(records: Sequence[Dict]) -> str:
    """Flush on / flush off time ratio per mixer, mode and size (median of interleaved pairs)."""
    rs = [r for r in _by(records, bench="mixers", status="ok") if r.get("flush_ratio")]
    if not rs:
        return ""
    sizes = _sizes(rs)
    rows = list(dict.fromkeys((r["mixer"], r["mode"]) for r in rs))
    lines = ["| mixer | mode | " + " | ".join(_label(n, s) for n, s in sizes) + " |", "|---" * (len(sizes) + 2) + "|"]
    for name, mode in rows:
        cells = []
        for n, s in sizes:
            r = next(
                (r for r in rs if r["mixer"] == name and r["mode"] == mode and r["N"] == n and r.get("side") == s), None
            )
            cells.append("" if r is None else f"{r['flush_ratio']:.2f}")
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mixer_goals(records: Sequence[Dict]) -> List[Dict]:
    """Each goal of the issue about mixers: what it asks, the measured value, met or not."""
    pairs = [r for r in records if r.get("bench") == "mixer_pair" and r.get("status") == "ok"]
    return [
        *_image_slope_goals(slopes(records), pairs),
        *_sequence_slope_goals(pairs),
        *_speedup_goals(records),
        *_sequence_speedup_goals(records),
        *_flush_goals([r for r in _by(records, bench="mixers", status="ok") if r.get("flush_ratio")]),
    ]


def _goal(goal: str, value, met: bool) -> Dict:
    return {"goal": goal, "value": value, "met": met}


def _image_slope_goals(sl: Sequence[Dict], pairs: Sequence[Dict]) -> List[Dict]:
    """The bounded-cost mixers' slope from 112² to 224² (inference): the interleaved pair where measured, else
    the separate medians'."""

    def at_112_224(rs, name):
        return next(
            (
                r
                for r in rs
                if r["mixer"] == name and r["mode"] == "inference" and r["from_side"] == 112 and r["to_side"] == 224
            ),
            None,
        )

    goals = []
    for name in LINEAR_CASES:
        p, s = at_112_224(pairs, name), at_112_224(sl, name)
        if p is not None:
            seq = "" if s is None or s["slope"] is None else f" (separate medians: {s['slope']:.2f})"
            goal = f"slope {name} 112²→224² (inference, interleaved runs) ≤ {SLOPE_GOAL}"
            goals.append(_goal(goal, f"{p['slope']:.2f}{seq}", p["slope"] <= SLOPE_GOAL))
        elif s is not None and s["slope"] is not None:
            goal = f"slope {name} 112²→224² (inference) ≤ {SLOPE_GOAL}"
            goals.append(_goal(goal, round(s["slope"], 3), s["slope"] <= SLOPE_GOAL))
    return goals


def _sequence_slope_goals(pairs: Sequence[Dict]) -> List[Dict]:
    """Sequences: the interleaved slope between the two longest lengths measured."""
    goals = []
    for name in LINEAR_SEQ_CASES:
        seq = [p for p in pairs if p.get("layout") == "sequence" and p["mixer"] == name and p["mode"] == "inference"]
        if seq:
            p = max(seq, key=lambda p: p["to_N"])
            goal = f"slope {name} {p['from_N']:,}→{p['to_N']:,} tokens (inference, interleaved runs) ≤ {SEQ_SLOPE_GOAL}"
            goals.append(_goal(goal, f"{p['slope']:.2f}", p["slope"] <= SEQ_SLOPE_GOAL))
    return goals


def _sequence_speedup_goals(records: Sequence[Dict]) -> List[Dict]:
    """Sequences: SOFT and SeT against SDPA at 65,536 tokens, and SOFT against the nystrom-attention package at
    every length both ran, per mode."""
    seq = _by(records, bench="mixers", layout="sequence", status="ok")
    goals = []
    n_goal, want = SEQ_SPEEDUP_GOAL
    for mode in ("inference", "train"):
        ref = _one(seq, mixer="sdpa", mode=mode, N=n_goal)
        for name in ("soft", "set"):
            r = _one(seq, mixer=name, mode=mode, N=n_goal)
            if ref and r:
                v = ref["median_s"] / r["median_s"]
                goal = f"{name} ≥ {want:g}× faster than SDPA at {n_goal:,} tokens ({mode})"
                goals.append(_goal(goal, round(v, 1), v >= want))
        ratios = []
        for r in _by(seq, mixer="soft", mode=mode):
            peer = _one(seq, mixer="nystrom", mode=mode, N=r["N"])
            if peer:
                ratios.append((peer["median_s"] / r["median_s"], r["N"]))
        if ratios:
            worst, n = min(ratios)
            value = f"{worst:.2f}× at {n:,} (slowest of {len(ratios)} lengths)"
            goals.append(_goal(f"soft faster than nystrom-attention at every length ({mode})", value, worst > 1.0))
    return goals


def _speedup_goals(records: Sequence[Dict]) -> List[Dict]:
    goals = []
    for side, want in SPEEDUP_GOALS.items():
        ref = _one(records, bench="mixers", mixer="sdpa", mode="inference", side=side)
        for name in ("soft_bounded", "set"):
            r = _one(records, bench="mixers", mixer=name, mode="inference", side=side)
            if ref and r:
                v = ref["median_s"] / r["median_s"]
                goals.append(
                    _goal(f"{name} ≥ {want:g}× faster than SDPA at {side}² (inference)", round(v, 2), v >= want)
                )
    return goals


def _flush_goals(flush: Sequence[Dict]) -> List[Dict]:
    """The largest change of time with subnormal flushing, over all mixers and over ours."""
    goals = []
    ours = [r for r in flush if r["mixer"] in ("pool", "soft_stride", "soft_bounded", "soft", "soft_norm", "set")]
    for goal, rs in (
        (f"flush-denormal on/off changes no mixer's time by more than {FLUSH_GOAL:.0%}", flush),
        ("... the same for our own mixers (pool, SOFT, SeT)", ours),
    ):
        if rs:
            w = max(rs, key=lambda r: abs(r["flush_ratio"] - 1))
            value = f"worst {w['flush_ratio']:.2f} ({w['mixer']}, {_label(w['N'], w.get('side'))}, {w['mode']})"
            goals.append(_goal(goal, value, abs(w["flush_ratio"] - 1) <= FLUSH_GOAL))
    return goals


def model_table(records: Sequence[Dict]) -> str:
    rs = _by(records, bench="models")
    if not rs:
        return ""
    lines = [
        "| model | from | input | dtype | images/s | peak memory | GFLOP/image | % of fp32 GEMM peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        mode = (
            r["dtype"]
            + (", compiled" if r.get("compile") else "")
            + (", channels-last" if r.get("channels_last") else "")
            + (", onnxruntime" if r.get("runtime") == "onnxruntime" else "")
            + (", train step" if r.get("mode") == "train" else "")
        )
        if r["status"] != "ok":
            lines.append(
                f"| {r['model']} | {r['source']} | {r['side']}² | {mode} | {r['status']}: {r.get('reason', '')} | | | |"
            )
            continue
        frac = r.get("fraction_of_matmul_peak")
        gf = (r.get("flops") or 0) / r["batch"] / 1e9
        lines.append(
            f"| {r['model']} | {r['source']} | {r['side']}² | {mode} | {r['images_per_s']:.1f} | "
            f"{measure.fmt_bytes(r.get('peak_mem_bytes'))} | {gf:.2f} | "
            f"{'' if frac is None else f'{100 * frac:.1f}%'} |"
        )
    return "\n".join(lines)


def profile_table(records: Sequence[Dict]) -> str:
    rs = [r for r in _by(records, bench="models", status="ok") if r.get("profile")]
    if not rs:
        return ""
    kinds = [
        "matmul",
        "depthwise conv / pooling",
        "elementwise & norms",
        "other operators",
        "overhead (wall - operators)",
    ]
    lines = [
        "| model | from | input | dtype | bound by | " + " | ".join(kinds) + " | top operators |",
        "|---|---|---|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for r in rs:
        p = r["profile"]
        cells = [f"{100 * p['by_kind_s'].get(k, 0.0) / p['wall_s']:.0f}%" for k in kinds]
        top = ", ".join(
            f"{k.replace('aten::', '')} {100 * v / p['wall_s']:.0f}%" for k, v in list(p["top_ops_s"].items())[:4]
        )
        lines.append(
            f"| {r['model']} | {r['source']} | {r['side']}² | {r['dtype']} | {r['bound_by']} | "
            + " | ".join(cells)
            + f" | {top} |"
        )
    return "\n".join(lines)


def model_goals(records: Sequence[Dict]) -> List[Dict]:
    """The poolformer_s12 speed goal: from the pair timed in turn where the run has it, else from the two
    separately measured medians."""
    goals = []
    for p in _by(records, bench="model_pair", status="ok"):
        mode = "compiled" if p.get("compile") else "eager"
        layout = ", channels-last" if p.get("channels_last") else ""
        same = "" if p.get("max_rel_diff") is None else f"; same weights: stage maps agree to {p['max_rel_diff']:.0e}"
        goals.append(
            {
                "goal": f"poolformer_s12 ≥ {POOLFORMER_GOAL}× timm's port ({mode}{layout}, {p['side']}², "
                f"{p['dtype']}, timed in turn)",
                "value": f"{p['speedup']:.2f} ({p['images_per_s'][0]:.1f} vs {p['images_per_s'][1]:.1f} "
                f"img/s{same})"
                + (
                    ""
                    if p.get("bound_speedup") is None
                    else f"; its oneDNN GEMMs and convolutions alone: {p['bound_speedup']:.2f}"
                ),
                "met": p["speedup"] >= POOLFORMER_GOAL,
            }
        )
    if goals:
        return goals
    for r in _by(records, bench="models", source="sofa", model="poolformer_s12", status="ok"):
        if r.get("mode", "inference") != "inference":  # the goal is about inference
            continue
        t = next(
            (
                t
                for t in _by(records, bench="models", source="timm", model="poolformer_s12", status="ok")
                if t["side"] == r["side"]
                and t["dtype"] == r["dtype"]
                and t.get("compile") == r.get("compile")
                and t.get("channels_last") == r.get("channels_last")
            ),
            None,
        )
        if t:
            v = r["images_per_s"] / t["images_per_s"]
            mode = "compiled" if r.get("compile") else "eager"
            goals.append(
                {
                    "goal": f"poolformer_s12 ≥ {POOLFORMER_GOAL}× timm's port ({mode}, {r['side']}², {r['dtype']})",
                    "value": round(v, 3),
                    "met": v >= POOLFORMER_GOAL,
                }
            )
    return goals


def goals_table(goals: Sequence[Dict]) -> str:
    if not goals:
        return ""
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for g in goals:
        lines.append(f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


def write_json(path: str | Path, payload: Dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def plot_mixers(records: Sequence[Dict], path: str | Path, title: str = "") -> None:
    """Time and peak memory against N on log-log axes, one line per mixer (inference solid, training dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in records if r.get("bench") == "mixers" and r.get("status") == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    names = list(dict.fromkeys(r["mixer"] for r in rs))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for ax, key, label in (
        (axes[0], "median_s", "median time (s)"),
        (axes[1], "peak_mem_bytes", "peak memory (bytes)"),
    ):
        for name in names:
            for mode, style in (("inference", "-"), ("train", "--")):
                pts = sorted((r["N"], r[key]) for r in rs if r["mixer"] == name and r["mode"] == mode and r.get(key))
                if pts:
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        style,
                        marker="o",
                        color=colors[name],
                        label=f"{name} ({mode})",
                    )
        ns = sorted({r["N"] for r in rs})
        vals = [r[key] for r in rs if r.get(key)]
        if len(ns) >= 2 and vals:
            lo = min(vals)
            for p, ls in ((1, ":"), (2, "-.")):
                ax.plot(ns, [lo * (n / ns[0]) ** p for n in ns], ls, color="grey", linewidth=1, label=f"∝ N^{p}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.subplots_adjust(right=0.78, wspace=0.25)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_models(records: Sequence[Dict], path: str | Path, title: str = "") -> None:
    """Images/s of each model at each size (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in records if r.get("bench") == "models" and r.get("status") == "ok"]
    keys = list(dict.fromkeys((r["source"], r["model"]) for r in rs))
    groups = list(dict.fromkeys((r["side"], r["dtype"]) for r in rs))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(keys) + 2), 4.5))
    width = 0.8 / max(1, len(groups))
    for gi, (side, dt) in enumerate(groups):
        ys = []
        for src, m in keys:
            r = next(
                (r for r in rs if r["source"] == src and r["model"] == m and r["side"] == side and r["dtype"] == dt),
                None,
            )
            ys.append(r["images_per_s"] if r else 0)
        ax.bar([i + gi * width for i in range(len(keys))], ys, width, label=f"{side}² {dt}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{m}\n({src})" for src, m in keys], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
