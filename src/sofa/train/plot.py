"""``curves.png``: loss, accuracy (or the task's metrics) and learning rate of a run, from its metrics.jsonl."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_metrics(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from sofa.checkpoint import atomic_write

    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_loss, ax_acc, ax_lr = axes

    if steps:
        ax_loss.plot([r["epoch"] for r in steps], [r["loss"] for r in steps], color="#9ecae1", lw=0.8,
                     label="train loss (step)")
    if epochs:
        x = [r["epoch"] for r in epochs]
        if any("train_loss" in r for r in epochs):
            ax_loss.plot(x, [r.get("train_loss") for r in epochs], "o-", color="#3182bd", ms=3, label="train loss")
        if any("val_loss" in r for r in epochs):
            xv = [r["epoch"] for r in epochs if "val_loss" in r]
            ax_loss.plot(xv, [r["val_loss"] for r in epochs if "val_loss" in r], "o-", color="#e6550d", ms=3,
                         label="val loss")
        # accuracy-like metrics: train_acc, val_top1/top5, ema_val_top1 (or other tasks' val_* scores)
        acc_keys = [k for k in ("train_acc", "val_top1", "val_top5", "ema_val_top1") if any(k in r for r in epochs)]
        if not acc_keys:
            acc_keys = sorted({k for r in epochs for k in r if k.startswith("val_") and k not in ("val_loss", "val_count")})
        for k in acc_keys:
            xs = [r["epoch"] for r in epochs if k in r]
            ax_acc.plot(xs, [r[k] for r in epochs if k in r], "o-", ms=3, label=k.replace("_", " "))
    lr_src = steps if steps else epochs
    if lr_src:
        ax_lr.plot([r["epoch"] for r in lr_src], [r["lr"] for r in lr_src], color="#31a354")
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
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
