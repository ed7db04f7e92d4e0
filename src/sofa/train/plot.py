"""``curves.png``: loss, accuracy (or the task's metrics) and learning rate of a run, from its metrics.jsonl.

:func:`select_curves` decides what is drawn (the tests check it), :func:`plot_metrics` draws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the accuracy panel's curves for classification, in this order, when a run has them
ACCURACY_KEYS = ("train_acc", "val_top1", "val_top5", "ema_val_top1")
#: names (after ``val_``/``ema_val_``) of evaluation results that count things rather than score them
COUNT_NAMES = {"count", "images", "samples", "num_samples", "instances", "seconds"}

Curve = tuple[str, list[float], list[float]]  # label, x (epochs), y


def _is_count(key: str, records: list[dict[str, Any]]) -> bool:
    name = key.split("val_", 1)[-1].lower()
    if name in COUNT_NAMES or name.startswith(("num_", "n_")) or name.endswith("count"):
        return True
    return any(isinstance(r[key], int) for r in records if key in r)  # scores are floats, counts integers


def _curve(records: list[dict[str, Any]], key: str, label: str | None = None) -> Curve:
    have = [r for r in records if r.get(key) is not None]
    return (label or key.replace("_", " "), [r["epoch"] for r in have], [r[key] for r in have])


def select_curves(records: list[dict[str, Any]]) -> dict[str, list[Curve]]:
    """What each panel of curves.png shows: ``{"loss": [...], "accuracy": [...], "lr": [...]}``.

    * loss: the train loss of every logged step, and the epochs' train and validation losses;
    * accuracy: classification's accuracies, else the task's validation scores (mIoU, box AP, ...), never a
      count (``val_count``, ``val_images``) nor a loss;
    * lr: from the step and epoch records together, in order, so that a run that logs few steps (short epochs,
      a long ``--log-interval``) still shows its whole schedule.
    """
    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    loss: list[Curve] = []
    if steps:
        loss.append(_curve(steps, "loss", "train loss (step)"))
    if any("train_loss" in r for r in epochs):
        loss.append(_curve(epochs, "train_loss"))
    if any("val_loss" in r for r in epochs):
        loss.append(_curve(epochs, "val_loss"))
    keys = [k for k in ACCURACY_KEYS if any(k in r for r in epochs)]
    if not keys:
        keys = sorted({k for r in epochs for k in r if k.startswith("val_") and "loss" not in k})
    accuracy = [_curve(epochs, k) for k in keys if not _is_count(k, epochs)]
    lr_points = sorted(((r["epoch"], r["lr"]) for r in steps + epochs if r.get("lr") is not None), key=lambda p: p[0])
    lr = [("learning rate", [x for x, _ in lr_points], [y for _, y in lr_points])] if lr_points else []
    return {"loss": loss, "accuracy": accuracy, "lr": lr}


def plot_metrics(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curves = select_curves(records)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_loss, ax_acc, ax_lr = axes
    styles = {
        "train loss (step)": dict(color="#9ecae1", lw=0.8),
        "train loss": dict(fmt="o-", color="#3182bd", ms=3),
        "val loss": dict(fmt="o-", color="#e6550d", ms=3),
    }
    for label, x, y in curves["loss"]:
        style = dict(styles.get(label, {}))
        fmt = style.pop("fmt", "-")
        ax_loss.plot(x, y, fmt, label=label, **style)
    for label, x, y in curves["accuracy"]:
        ax_acc.plot(x, y, "o-", ms=3, label=label)
    for _, x, y in curves["lr"]:
        ax_lr.plot(x, y, color="#31a354")
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy (%)")
    ax_lr.set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it as a PNG atomically (a reader never sees half a file) and close it."""
    import io

    import matplotlib.pyplot as plt

    from sofa.checkpoint import atomic_write

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
