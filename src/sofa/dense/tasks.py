"""``sofa train --task segmentation`` and ``--task detection``: the dense tasks of the generic training loop.

Both plug into ``sofa.train.task.Task``; the loop supplies progress, ``metrics.jsonl``, checkpoints, ``--resume``,
DDP and mixed precision. ``--data`` is a dataset root, or ``shapes`` (the default) for the synthetic set that
``sofa data shapes`` writes (generated once into ``$SOFA_CACHE`` or ``~/.cache/sofa``).

Segmentation: ``--data`` in the ADE20K layout (``images/<split>``, ``annotations/<split>``); metrics mIoU (primary),
aAcc, mAcc and ``IoU.<class>``. Detection: ``--data`` holding ``annotations/instances_<split>.json`` with images in
``images/<split>`` or ``<split>`` (COCO's own layout: ``train2017``/``val2017``); metrics ``bbox_AP`` (primary),
``bbox_AP50`` … and ``segm_*`` for Mask R-CNN, from pycocotools.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sofa.train.task import EvalContext, StepOutput, Task, register_task

__all__ = ["SegmentationTask", "DetectionTask", "shapes_root"]

SHAPES = "shapes"
SHAPES_VERSION = 1


def shapes_root(num_train: int = 200, num_val: int = 50) -> Path:
    """The cached synthetic dataset (written on first use, atomically, so concurrent ranks are safe)."""
    from sofa.dense.shapes import write_shapes

    cache = Path(os.environ.get("SOFA_CACHE", Path.home() / ".cache" / "sofa"))
    root = cache / f"shapes-v{SHAPES_VERSION}-{num_train}-{num_val}"
    if (root / "classes.json").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=cache))
    try:
        write_shapes(tmp, num_train=num_train, num_val=num_val)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_shapes(cfg) -> bool:
    """The synthetic set: ``--data shapes`` (the default) or a folder written by ``sofa data shapes``."""
    data = str(getattr(cfg, "data", None) or SHAPES)
    if data == SHAPES:
        return True
    meta = Path(data) / "classes.json"
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("dataset") == "sofa-shapes"
    except (OSError, ValueError):
        return False


def _data_root(cfg) -> Path:
    from sofa.errors import UserError

    if str(getattr(cfg, "data", None) or SHAPES) == SHAPES:
        return shapes_root()
    root = Path(cfg.data)
    if not root.is_dir():
        raise UserError(
            f"--data {cfg.data}: no such directory (give a dataset root, or 'shapes' for the synthetic set)"
        )
    return root


def _pair(v, name: str) -> tuple | None:
    """One or two numbers (an int, a list from the command line or a config file, or a string "512 512")."""
    from sofa.errors import UserError

    if v is None:
        return None
    if isinstance(v, (int, float)):
        return (v, v)
    if isinstance(v, str):
        try:
            v = tuple(float(t) if "." in t else int(t) for t in v.replace(",", " ").replace("x", " ").split())
        except ValueError:
            raise UserError(f"{name} expects one or two numbers, got {v!r}") from None
    v = tuple(v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise UserError(f"{name} takes one or two values, got {v}")
    return v


def backbone_kwargs(cfg) -> dict[str, Any]:
    """``--backbone-arg KEY=VALUE`` options (values parsed as YAML) plus the loop's ``--drop-path``."""
    import yaml

    from sofa.errors import UserError

    out: dict[str, Any] = {}
    for item in getattr(cfg, "backbone_arg", None) or []:
        if isinstance(item, dict):
            out.update(item)
            continue
        if "=" not in str(item):
            raise UserError(f"--backbone-arg expects KEY=VALUE (e.g. max_landmarks=49), got {item!r}")
        k, v = str(item).split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    if getattr(cfg, "drop_path", None):
        out.setdefault("drop_path_rate", float(cfg.drop_path))
    return out


def _add_common(p) -> None:
    p.add_argument(
        "--backbone-checkpoint",
        default=None,
        metavar="FILE",
        help="classification checkpoint loaded into the backbone (safetensors from `sofa convert`, an "
        "original release .pth or a `sofa train` checkpoint)",
    )
    p.add_argument(
        "--backbone-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="backbone keyword argument, repeatable (e.g. --backbone-arg max_landmarks=49)",
    )
    p.add_argument("--train-split", default=None, help="training split folder (default: training / train2017)")
    p.add_argument("--val-split", default=None, help="evaluation split folder (default: validation / val2017)")
    p.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-val-samples", type=int, default=None, help="evaluate only the first N images")


def _backbone_checkpoint(cfg) -> str | None:
    """The backbone's initial weights, except when ``sofa eval`` rebuilds a trained model (it sets ``cfg.classes``
    from the checkpoint, whose weights then replace everything): no need to read, or even keep, that file."""
    if getattr(cfg, "classes", None):
        return None
    return getattr(cfg, "backbone_checkpoint", None)


# ====================================================================================== segmentation
class _DenseTask(Task):
    """What the dense tasks share: on the synthetic shapes set, a light CPU profile (``SHAPES_PROFILE``)."""

    SHAPES_PROFILE: dict[str, Any] = {}

    @classmethod
    def profile(cls, cfg) -> dict[str, Any]:
        return dict(cls.SHAPES_PROFILE) if _is_shapes(cfg) else {}


class SegmentationTask(_DenseTask):
    name = "segmentation"
    primary_metric = "mIoU"
    higher_is_better = True
    #: the papers' ADE20K recipe (mmseg UperNet 160k, batch 16, AdamW 6e-5, poly) expressed in epochs
    defaults: dict[str, Any] = dict(
        data=SHAPES,
        model="soft_tiny",
        epochs=127,
        batch_size=16,
        lr=6e-5,
        min_lr=0.0,
        weight_decay=0.01,
        warmup_epochs=1.2,
        sched="poly",
        drop_path=0.1,
    )
    #: quick CPU profile for the synthetic shapes
    SHAPES_PROFILE: dict[str, Any] = dict(
        model="poolformer_mini",
        epochs=40,
        batch_size=8,
        lr=2e-3,
        min_lr=1e-5,
        weight_decay=0.01,
        warmup_epochs=0.5,
        sched="cosine",
        drop_path=0.0,
        decoder_channels=64,
    )

    @classmethod
    def add_args(cls, p) -> None:
        _add_segmentation_model_args(p)
        _add_segmentation_data_args(p)
        _add_segmentation_eval_args(p)
        _add_common(p)

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        self._root: Path | None = None
        self._classes: list[str] | None = None

    # ---------------------------------------------------------------- data
    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = _data_root(self.cfg)
        return self._root

    @property
    def reduce_zero_label(self) -> bool:
        r = getattr(self.cfg, "reduce_zero_label", None)
        return (not (self.root / "classes.json").is_file()) if r is None else bool(r)

    def pipeline(self):
        from sofa.dense.seg_data import SegPipeline

        c = self.cfg
        pipe = SegPipeline.preset("shapes" if _is_shapes(c) else "ade20k")
        if getattr(c, "crop_size", None):
            pipe.crop_size = tuple(int(v) for v in _pair(c.crop_size, "--crop-size"))
        if getattr(c, "seg_scale", None):
            pipe.scale = tuple(int(v) for v in _pair(c.seg_scale, "--seg-scale"))
        if getattr(c, "ratio_range", None):
            pipe.ratio_range = tuple(float(v) for v in _pair(c.ratio_range, "--ratio-range"))
        pipe.ignore_index = int(getattr(c, "ignore_index", 255) or 255)
        return pipe

    def _split(self, which: str) -> str:
        v = getattr(self.cfg, f"{which}_split", None)
        return v or ("training" if which == "train" else "validation")

    def _dataset(self, which: str, transform):
        from sofa.dense.seg_data import SegmentationDataset
        from sofa.errors import UserError

        limit = getattr(self.cfg, f"max_{which}_samples", None)
        try:
            ds = SegmentationDataset(
                self.root,
                self._split(which),
                transform,
                self.reduce_zero_label,
                ignore_index=self.pipeline().ignore_index,
                max_samples=limit,
            )
        except (FileNotFoundError, ValueError) as err:
            raise UserError(str(err)) from None
        self._classes = ds.class_names
        return ds

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            saved = getattr(self.cfg, "classes", None)
            if saved:
                self._classes = list(saved)
            else:
                self._dataset("val", None)
        return self._classes

    def build_datasets(self):
        from sofa.dense.seg_data import SegEvalTransform, SegTrainTransform

        pipe = self.pipeline()
        return self._dataset("train", SegTrainTransform(pipe)), self._dataset("val", SegEvalTransform(pipe))

    def build_eval_dataset(self):
        from sofa.dense.seg_data import SegEvalTransform

        return self._dataset("val", SegEvalTransform(self.pipeline()))

    def collate_fn(self, split: str):
        from sofa.dense.seg_data import seg_eval_collate, seg_train_collate

        return seg_train_collate if split == "train" else seg_eval_collate

    # ---------------------------------------------------------------- model
    def build_model(self):
        from sofa.dense.segmentation import build_segmentor

        c = self.cfg
        model = build_segmentor(
            c.model,
            len(self.classes),
            head=getattr(c, "seg_head", "auto") or "auto",
            decoder_channels=getattr(c, "decoder_channels", None),
            aux_head=getattr(c, "aux_head", None),
            backbone_checkpoint=_backbone_checkpoint(c),
            **backbone_kwargs(c),
        )
        if _backbone_checkpoint(c):
            self.log(f"backbone initialised from {c.backbone_checkpoint}")
        return model

    # ---------------------------------------------------------------- steps
    def train_step(self, model, batch) -> StepOutput:
        from sofa.dense.segmentation import segmentation_loss

        out = model(batch["image"])
        loss, logs = segmentation_loss(
            out, batch["label"], self.pipeline().ignore_index, float(getattr(self.cfg, "aux_weight", 0.4))
        )
        with torch.no_grad():
            logits = out[0] if isinstance(out, (tuple, list)) else out
            valid = batch["label"] != self.pipeline().ignore_index
            correct = ((logits.argmax(1) == batch["label"]) & valid).sum()
            logs["pix_acc"] = correct.float() * 100 / valid.sum().clamp(min=1)
        return StepOutput(loss, logs, int(batch["image"].shape[0]))

    def eval_step(self, model, batch) -> dict[str, torch.Tensor]:
        from sofa.dense.segmentation import predict_labels

        pipe = self.pipeline()
        n = len(self.classes)
        crop = pipe.crop_size
        stride = _pair(getattr(self.cfg, "slide_stride", None), "--slide-stride") or tuple(
            max(1, (2 * s + 2) // 3) for s in crop
        )  # 512 → 341 as mmseg
        preds = predict_labels(
            model,
            batch["image"],
            batch["img_shape"],
            batch["ori_shape"],
            n,
            mode=getattr(self.cfg, "inference", "whole") or "whole",
            crop_size=crop,
            stride=stride,
        )
        conf = torch.zeros(n * n, dtype=torch.float64, device=batch["image"].device)
        for p, t in zip(preds, batch["label"], strict=False):
            t = t.to(p.device).reshape(-1)
            p = p.reshape(-1)
            valid = t != pipe.ignore_index
            conf += torch.bincount(n * t[valid] + p[valid], minlength=n * n).double()
        return {"confusion": conf.reshape(n, n), "images": torch.tensor(float(len(preds)))}

    def finalize_eval(self, sums) -> dict[str, float]:
        from sofa.dense.metrics import SegmentationMetric

        m = SegmentationMetric(len(self.classes), class_names=self.classes)
        if "confusion" in sums:
            m.merge(sums["confusion"].round().to(torch.int64))
        res = m.compute()
        out = {
            "mIoU": 100 * res["mIoU"],
            "aAcc": 100 * res["aAcc"],
            "mAcc": 100 * res["mAcc"],
            "images": int(sums.get("images", torch.tensor(0.0))),
        }
        if len(self.classes) <= 20 or getattr(self.cfg, "per_class_iou", False):
            out.update({f"IoU.{k}": 100 * v for k, v in res["IoU"].items()})
        return out

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "num_classes": len(self.classes),
            "task": self.name,
            "reduce_zero_label": self.reduce_zero_label,
        }


def _add_segmentation_model_args(p) -> None:
    """The decode head: UperNet or Semantic FPN, its width, the auxiliary FCN head."""
    p.add_argument(
        "--seg-head",
        default="auto",
        choices=("auto", "upernet", "fpn"),
        help="auto: Semantic FPN for PoolFormer, UperNet otherwise (the papers' choices)",
    )
    p.add_argument(
        "--decoder-channels",
        type=int,
        default=None,
        help="UperNet channels (default 512) / FPN pyramid channels (default 256)",
    )
    p.add_argument(
        "--aux-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mmseg's auxiliary FCN head, loss weight --aux-weight (default: on for UperNet)",
    )
    p.add_argument("--aux-weight", type=float, default=0.4)


def _add_segmentation_data_args(p) -> None:
    """Crops, resizing and labels of the training data."""
    p.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="training crop H [W] (default 512; shapes 128)",
    )
    p.add_argument(
        "--seg-scale",
        type=int,
        nargs=2,
        default=None,
        metavar=("LONG", "SHORT"),
        help="resize bound LONG SHORT at ratio 1 (default 2048 512; shapes 512 128)",
    )
    p.add_argument(
        "--ratio-range",
        type=float,
        nargs=2,
        default=(0.5, 2.0),
        metavar=("MIN", "MAX"),
        help="random rescale range (default 0.5 2.0)",
    )
    p.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ADE20K's 0 → ignore, l → l-1 (default: on unless the data has classes.json)",
    )
    p.add_argument("--ignore-index", type=int, default=255)


def _add_segmentation_eval_args(p) -> None:
    """How the validation images are run and reported."""
    p.add_argument("--inference", default="whole", choices=("whole", "slide"), help="evaluation mode")
    p.add_argument(
        "--slide-stride",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="sliding-window stride (default 2/3 of the crop, e.g. 341 for 512)",
    )
    p.add_argument(
        "--per-class-iou",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report IoU.<class> for every class (default: when there are at most 20 classes)",
    )


# ====================================================================================== detection
class DetectionTask(_DenseTask):
    name = "detection"
    primary_metric = "bbox_AP"
    higher_is_better = True
    #: the papers' COCO 1x recipe (12 epochs, batch 16, AdamW 1e-4, wd 0.05; step decay there, cosine here)
    defaults: dict[str, Any] = dict(
        data=SHAPES,
        model="soft_tiny",
        epochs=12,
        batch_size=2,
        lr=1e-4,
        min_lr=1e-6,
        weight_decay=0.05,
        warmup_epochs=0.1,
        drop_path=0.1,
        clip_grad=None,
    )
    SHAPES_PROFILE: dict[str, Any] = dict(
        model="poolformer_mini",
        epochs=4,
        batch_size=4,
        lr=1e-3,
        min_lr=1e-5,
        weight_decay=0.05,
        warmup_epochs=0.3,
        drop_path=0.0,
        clip_grad=5.0,
        fpn_channels=64,
        roi_batch_size=64,
    )

    @classmethod
    def add_args(cls, p) -> None:
        p.add_argument(
            "--detector",
            default="maskrcnn",
            choices=("maskrcnn", "retinanet"),
            help="Mask R-CNN (boxes + masks, FPN from stride 4) or RetinaNet (FPN from stride 8)",
        )
        p.add_argument("--min-size", type=int, default=None, help="resize: shorter side (default 800; shapes 160)")
        p.add_argument("--max-size", type=int, default=None, help="resize: longer side cap (default 1333; shapes 267)")
        p.add_argument(
            "--anchor-base",
            type=int,
            default=None,
            help="anchor size of the finest level, doubling per level (default 32; shapes 16)",
        )
        p.add_argument("--flip-prob", type=float, default=0.5)
        p.add_argument(
            "--fpn-channels",
            type=int,
            default=None,
            help="FPN width; Mask R-CNN's heads scale with it (default 256; shapes 64)",
        )
        p.add_argument(
            "--roi-batch-size",
            type=int,
            default=None,
            help="Mask R-CNN RoIs sampled per image for the box/mask heads (default 512; shapes 64)",
        )
        _add_common(p)

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        self._root: Path | None = None
        self._meta: dict | None = None
        self._coco_eval_gt = None

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = _data_root(self.cfg)
        return self._root

    def _split(self, which: str) -> str:
        v = getattr(self.cfg, f"{which}_split", None)
        if v:
            return v
        coco_names = (self.root / "annotations" / "instances_train2017.json").is_file()
        if which == "train":
            return "train2017" if coco_names else "training"
        return "val2017" if coco_names else "validation"

    def _paths(self, which: str) -> tuple[Path, Path]:
        from sofa.errors import UserError

        split = self._split(which)
        ann = self.root / "annotations" / f"instances_{split}.json"
        images = self.root / "images" / split
        if not images.is_dir():
            images = self.root / split
        if not ann.is_file() or not images.is_dir():
            raise UserError(
                f"detection data for split {split!r}: expected {ann} and an image folder "
                f"{self.root / 'images' / split} or {self.root / split}"
            )
        return images, ann

    def _settings(self) -> dict[str, int]:
        c, shapes = self.cfg, _is_shapes(self.cfg)
        return dict(
            min_size=getattr(c, "min_size", None) or (160 if shapes else 800),
            max_size=getattr(c, "max_size", None) or (267 if shapes else 1333),
            anchor_base=getattr(c, "anchor_base", None) or (16 if shapes else 32),
            fpn_channels=getattr(c, "fpn_channels", None) or (64 if shapes else 256),
        )

    @property
    def with_masks(self) -> bool:
        return (getattr(self.cfg, "detector", "maskrcnn") or "maskrcnn") == "maskrcnn"

    def _dataset(self, which: str, transform, remove_empty: bool):
        from sofa.dense.det_data import CocoDetection

        images, ann = self._paths(which)
        ds = CocoDetection(
            images,
            ann,
            transform,
            with_masks=self.with_masks,
            remove_empty=remove_empty,
            max_samples=getattr(self.cfg, f"max_{which}_samples", None),
        )
        self._meta = {"classes": ds.class_names, "label_to_cat_id": ds.label_to_cat_id}
        if which == "val":
            self._coco_eval_gt = ds.coco
        return ds

    @property
    def classes(self) -> list[str]:
        if self._meta is None:
            saved = getattr(self.cfg, "classes", None)
            if saved:
                return list(saved)
            images, ann = self._paths("val")
            cats = sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])
            self._meta = {
                "classes": [c["name"] for c in cats],
                "label_to_cat_id": {i + 1: c["id"] for i, c in enumerate(cats)},
            }
        return self._meta["classes"]

    def build_datasets(self):
        from sofa.dense.det_data import DetTrainTransform

        flip = getattr(self.cfg, "flip_prob", 0.5)
        train = self._dataset("train", DetTrainTransform(0.5 if flip is None else flip), remove_empty=True)
        return train, self._dataset("val", None, remove_empty=False)

    def build_eval_dataset(self):
        return self._dataset("val", None, remove_empty=False)

    def collate_fn(self, split: str):
        from sofa.dense.det_data import det_collate

        return det_collate

    def build_model(self):
        from sofa.dense.detection import build_detector

        c = self.cfg
        kind = getattr(c, "detector", "maskrcnn") or "maskrcnn"
        det_kw = {}
        if kind == "maskrcnn":
            det_kw["box_batch_size_per_image"] = getattr(c, "roi_batch_size", None) or (64 if _is_shapes(c) else 512)
        model = build_detector(
            kind,
            c.model,
            len(self.classes),
            backbone_checkpoint=_backbone_checkpoint(c),
            detector_kwargs=det_kw,
            **self._settings(),
            **backbone_kwargs(c),
        )
        if _backbone_checkpoint(c):
            self.log(f"backbone initialised from {c.backbone_checkpoint}")
        return model

    def train_step(self, model, batch) -> StepOutput:
        images, targets = batch
        losses = model(images, targets)
        loss = sum(losses.values())
        return StepOutput(loss, {k: v.detach() for k, v in losses.items()}, len(images))

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        from sofa.dense.metrics import CocoEvaluator, flat_coco_metrics

        if self._coco_eval_gt is None:
            self.build_eval_dataset()
        iou_types = ("bbox", "segm") if self.with_masks else ("bbox",)
        label_map = self._meta["label_to_cat_id"]
        ev = CocoEvaluator(self._coco_eval_gt, iou_types, label_to_cat_id=label_map)
        for (_, targets), outputs in self.eval_outputs(model, loader, ctx, lambda m, batch: m(batch[0])):
            outputs = [{k: v.float().cpu() for k, v in o.items()} for o in outputs]
            ev.update([t["image_id"] for t in targets], outputs)
        gathered = ctx.all_gather_object((ev.results, ev.image_ids))
        res: dict[str, float] | None = None
        if ctx.rank == 0:
            for results, ids in gathered[1:]:
                ev.add_results(results, ids)
            res = {k: v for k, v in flat_coco_metrics(ev.compute()).items() if "_AR" not in k}
            res["images"] = len(set(ev.image_ids))
        return ctx.all_gather_object(res)[0]

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "num_classes": len(self.classes),
            "task": self.name,
            "detector": getattr(self.cfg, "detector", "maskrcnn"),
            **{k: v for k, v in self._settings().items()},
        }


register_task("segmentation", SegmentationTask)
register_task("detection", DetectionTask)
