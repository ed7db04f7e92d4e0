"""``sofa compare RUN...``: several runs side by side — their validation curves in one plot, and a table of
their final and best values and of what their ``results.json`` records, with runs of the same model (seeds)
summarised as mean ± standard deviation.

A run is a directory that ``sofa train`` / ``sofa pretrain`` wrote: ``metrics.jsonl`` (one record per logged
step and per epoch; the epoch records carry ``global_step`` and the ``val_*`` metrics), ``config.yaml`` (the
options, ``model`` and ``seed`` among them) and, for the tasks that write one, ``results.json`` (e.g. the
test accuracy of LRA and of text classification).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sofa.errors import UserError

#: results.json values shown by default, where every run has them (LRA's, then text classification's)
DEFAULT_RESULTS = ("dev_acc", "test_acc", "metrics.acc", "test_metrics.acc", "score")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    epochs: list[dict[str, Any]]  # the epoch records of metrics.jsonl, in order
    results: dict[str, float] = field(default_factory=dict)  # results.json's numbers, nested keys joined by "."

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))

    def curve(self, metric: str) -> tuple[list[float], list[float]]:
        """(optimiser steps, values) of ``metric`` over the epoch records that have it."""
        have = [r for r in self.epochs if isinstance(r.get(metric), (int, float))]
        return [float(r.get("global_step", r.get("epoch", 0))) for r in have], [float(r[metric]) for r in have]


def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix[:-1]: float(value)}
    return {}


def load_run(path: str | Path) -> Run:
    """A run directory's records; a clear error when ``path`` is not one."""
    import yaml

    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{path}: not a run directory (no metrics.jsonl)")
    epochs = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        if record.get("type") == "epoch":
            epochs.append(record)
    config_file = path / "config.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    results_file = path / "results.json"
    results = _flatten(json.loads(results_file.read_text())) if results_file.is_file() else {}
    return Run(path, config, epochs, results)


#: options that differ between repeats of one experiment, or change nothing about its result
NOT_THE_EXPERIMENT = {"seed", "output", "resume", "config", "progress", "workers", "threads", "device", "log_interval"}


def group_labels(runs: Sequence[Run]) -> list[str]:
    """Each run's group: its model, and the options in which it differs from other runs of that model (e.g.
    ``init``), so that runs differing only in their seed (or in where they were written) share a group."""

    def setting(run: Run) -> dict[str, str]:
        return {k: str(v) for k, v in run.config.items() if k not in NOT_THE_EXPERIMENT}

    settings = [setting(r) for r in runs]
    labels = []
    for run, mine in zip(runs, settings, strict=True):
        peers = [s for r, s in zip(runs, settings, strict=True) if r.model == run.model]
        differ = sorted(k for k in mine if any(p.get(k) != mine[k] for p in peers))
        shown = ", ".join(f"{k}={Path(mine[k]).name if k == 'init' else mine[k]}" for k in differ)
        labels.append(f"{run.model} ({shown})" if shown else run.model)
    return labels


def _labels(runs: Sequence[Run], group: bool) -> list[str]:
    """What each run is shown as: its group (:func:`group_labels`), or its path when runs are not grouped."""
    return group_labels(runs) if group else [str(r.path) for r in runs]


def _best(values: list[float], metric: str) -> float:
    lower_is_better = "loss" in metric or "ppl" in metric or metric.endswith("error")
    return min(values) if lower_is_better else max(values)


def _summary(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def compare_table(runs: Sequence[Run], metric: str, results: Sequence[str], group: bool) -> tuple[str, list[dict]]:
    """The Markdown table and its rows: one row per model when ``group`` (mean ± sample standard deviation over
    its runs), else one per run."""
    groups: dict[str, list[Run]] = {}
    for run, label in zip(runs, _labels(runs, group), strict=True):
        groups.setdefault(label, []).append(run)
    rows = []
    for name, members in groups.items():
        finals, bests, steps = [], [], []
        for run in members:
            x, y = run.curve(metric)
            if y:
                finals.append(y[-1])
                bests.append(_best(y, metric))
                steps.append(x[-1])
        row: dict[str, Any] = {
            "run": name,
            "runs": len(members),
            "steps": max(steps) if steps else None,
            f"final {metric}": finals,
            f"best {metric}": bests,
        }
        for key in results:
            row[key] = [r.results[key] for r in members if key in r.results]
        rows.append(row)
    headers = ["model" if group else "run", "runs", "steps", f"final {metric}", f"best {metric}", *results]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["run"], str(row["runs"]), "" if row["steps"] is None else f"{row['steps']:.0f}"]
        cells += [_summary(row[h]) for h in headers[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def plot_compare(
    runs: Sequence[Run],
    metric: str,
    path: str | Path,
    group: bool,
    title: str = "",
    lines: Sequence[tuple[float, str]] = (),
) -> Path:
    """``metric`` against optimiser steps, one line per run, one colour per model when ``group``; ``lines``:
    horizontal reference lines (value, label), e.g. a corpus's unigram entropy under MLM losses."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from sofa.train.plot import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, Any] = {}
    for run, key in zip(runs, _labels(runs, group), strict=True):
        first = key not in colours
        if first:
            colours[key] = f"C{len(colours) % 10}"
        x, y = run.curve(metric)
        ax.plot(x, y, "o-", ms=2.5, lw=1.2, color=colours[key], label=key if first else None, alpha=0.85)
    for value, label in lines:
        ax.axhline(value, color="0.4", ls="--", lw=1, label=label)
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    if colours or lines:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def _reference_line(text: str) -> tuple[float, str]:
    value, _, label = text.partition("=")
    try:
        return float(value), label or value
    except ValueError:
        raise UserError(f"--line {text!r}: expected VALUE or VALUE=LABEL, e.g. '5.245=unigram entropy'") from None


def cmd_compare(args) -> int:
    runs = [load_run(p) for p in args.runs]
    metric = args.metric
    missing = [str(r.path) for r in runs if not r.curve(metric)[1]]
    if len(missing) == len(runs):
        seen = sorted({k for r in runs for e in r.epochs for k in e if k.startswith(("val_", "train_"))})
        raise UserError(f"no run records {metric!r}; they record: {', '.join(seen) or 'no epoch yet'}")
    results = args.result or [k for k in DEFAULT_RESULTS if all(k in r.results for r in runs)]
    group = args.group_by == "model"
    table, rows = compare_table(runs, metric, results, group)
    print(table)
    if missing:
        print(f"(no {metric} in: {', '.join(missing)})")
    if args.plot:
        lines = [_reference_line(text) for text in args.line or ()]
        print(f"wrote {plot_compare(runs, metric, args.plot, group, args.title or '', lines)}")
    if args.json:
        from sofa.checkpoint import atomic_write_text

        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        payload = {
            "metric": metric,
            "runs": [
                {
                    "path": str(r.path),
                    "model": r.model,
                    "seed": r.config.get("seed"),
                    "curve": r.curve(metric),
                    "results": {k: clean(v) for k, v in r.results.items()},
                }  # fmt: skip
                for r in runs
            ],
            "rows": rows,
        }
        atomic_write_text(Path(args.json), json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="several runs side by side: validation curves in one plot, final/best values, mean ± sd over seeds",
        description="Compare runs of sofa train / sofa pretrain: a table of each model's final and best value of "
        "--metric and of its results.json numbers (mean ± sample standard deviation over runs of the same model, "
        "e.g. seeds), and with --plot the metric against optimiser steps for every run.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--metric", default="val_loss", help="epoch metric of metrics.jsonl (default val_loss)")
    p.add_argument(
        "--result",
        action="append",
        metavar="KEY",
        help="a results.json number to tabulate, nested keys joined by '.' (e.g. test_metrics.acc); repeatable; "
        f"default: those of {', '.join(DEFAULT_RESULTS)} that every run has",
    )
    p.add_argument("--group-by", choices=("model", "run"), default="model", help="(default model)")
    p.add_argument("--plot", metavar="PNG", help="draw the curves to this file")
    p.add_argument("--title", help="the plot's title")
    p.add_argument("--line", action="append", metavar="VALUE[=LABEL]", help="a horizontal reference line; repeatable")
    p.add_argument("--json", metavar="PATH", help="write the curves and the table's values")
    p.set_defaults(func=cmd_compare)
