"""The dense tasks in the training loop: short runs learn, and train / eval / resume work end to end."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from helpers import TINY_SEGMENTATION

pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("pycocotools")

from sofa.cli import main  # noqa: E402
from sofa.dense.shapes import write_shapes  # noqa: E402
from sofa.train.task import get_task, list_tasks  # noqa: E402

#: a detector small enough for the shapes: 64-96 pixel images, 16-pixel anchors, a 32-channel FPN
SMALL_DETECTOR = "--min-size 64 --max-size 96 --anchor-base 16 --fpn-channels 32".split()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num_train=6, num_val=3, min_size=48, max_size=64, seed=2)
    return root


def _cfg(task: str, data, **kw):
    cls = get_task(task)
    p = argparse.ArgumentParser()
    cls.add_args(p)
    cfg = p.parse_args([])
    base = dict(data=str(data), model="poolformer_mini", drop_path=0.0, channels_last=False)
    base.update(kw)
    for k, v in base.items():
        setattr(cfg, k, v)
    return cls(cfg, log=lambda m: None)


def test_dense_tasks_are_registered():
    assert {"segmentation", "detection"} <= set(list_tasks())


def _overfit(task, batch, steps: int, lr: float):
    model = task.build_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = task.train_step(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


def test_segmentation_short_training_reduces_loss(shapes):
    task = _cfg("segmentation", shapes, crop_size=(48, 48), seg_scale=(128, 48), decoder_channels=16)
    train, _ = task.build_datasets()
    batch = task.collate_fn("train")([train[i] for i in range(4)])
    losses = _overfit(task, batch, steps=12, lr=3e-3)
    assert losses[-1] < 0.6 * losses[0], losses


def test_detection_short_training_reduces_loss(shapes):
    task = _cfg(
        "detection",
        shapes,
        detector="maskrcnn",
        min_size=64,
        max_size=96,
        anchor_base=16,
        flip_prob=0.0,
        fpn_channels=32,
        roi_batch_size=64,
    )
    train, _ = task.build_datasets()
    batch = task.collate_fn("train")([train[i] for i in range(2)])
    torch.manual_seed(0)
    losses = _overfit(task, batch, steps=10, lr=1e-3)
    assert losses[-1] < 0.7 * losses[0], losses


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_segmentation_train_eval_resume_cli(shapes, tmp_path):
    import sofa
    from sofa.checkpoint import save_weights

    backbone = tmp_path / "cls.safetensors"  # a classification checkpoint for the backbone
    save_weights(backbone, sofa.create_model("poolformer_mini", num_classes=5).state_dict())
    run = tmp_path / "seg"
    common = ["--data", str(shapes), *TINY_SEGMENTATION, "--backbone-checkpoint", str(backbone)]
    assert main(["train", "--task", "segmentation", "--epochs", "1", "--output", str(run), *common]) == 0
    for f in ("last.pt", "model.safetensors", "best.safetensors", "metrics.jsonl", "config.yaml"):
        assert (run / f).is_file(), f
    rec = [r for r in _metrics(run) if "val_mIoU" in r][-1]
    assert 0 <= rec["val_mIoU"] <= 100 and "val_aAcc" in rec and "val_IoU.circle" in rec
    # eval of the final weights reproduces the last validation (and needs no backbone file any more)
    backbone.unlink()
    out = tmp_path / "eval.json"
    assert (
        main(["eval", str(run / "model.safetensors"), "--output", str(out), "--workers", "0", "--progress", "none"])
        == 0
    )
    ev = json.loads(out.read_text())["metrics"]
    assert ev["mIoU"] == pytest.approx(rec["val_mIoU"], abs=1e-6)
    # resume to a longer schedule continues from epoch 2 (the backbone file is built over, then replaced)
    save_weights(backbone, sofa.create_model("poolformer_mini", num_classes=5).state_dict())
    assert main(["train", "--resume", str(run), "--epochs", "2", "--progress", "none"]) == 0
    epochs = [r["epoch"] for r in _metrics(run) if "val_mIoU" in r]
    assert epochs[-1] == 2 and len(epochs) == 2


def test_detection_train_eval_cli(shapes, tmp_path):
    run = tmp_path / "det"
    assert (
        main(
            [
                "train",
                "--task",
                "detection",
                "--data",
                str(shapes),
                "--model",
                "poolformer_mini",
                "--detector",
                "retinanet",
                "--epochs",
                "1",
                "--batch-size",
                "3",
                "--workers",
                "0",
                *SMALL_DETECTOR,
                "--max-val-samples",
                "2",
                "--output",
                str(run),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    rec = [r for r in _metrics(run) if "val_bbox_AP" in r][-1]
    assert 0 <= rec["val_bbox_AP"] <= 1 and "val_segm_AP" not in rec  # RetinaNet: boxes only
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--output", str(out), "--workers", "0", "--progress", "none"]) == 0
    ev = json.loads(out.read_text())["metrics"]
    assert ev["bbox_AP"] == pytest.approx(rec["val_bbox_AP"], abs=1e-9) and ev["images"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,extra",
    [
        ("segmentation", ["--crop-size", "48", "--seg-scale", "128", "48", "--decoder-channels", "16"]),
        (
            "detection",
            ["--detector", "maskrcnn", *SMALL_DETECTOR],
        ),
    ],
)
def test_dense_tasks_under_ddp(shapes, tmp_path, task, extra):
    """Two CPU processes (gloo) through torchrun: training, the sharded evaluation and its gathering."""
    import os
    import subprocess
    import sys

    run = tmp_path / task
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "sofa",
        "train",
        "--task",
        task,
        "--data",
        str(shapes),
        "--model",
        "poolformer_mini",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--output",
        str(run),
        "--progress",
        "none",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = [r for r in _metrics(run) if "val_images" in r][-1]
    assert rec["val_images"] == 3  # both ranks' shards were counted once
