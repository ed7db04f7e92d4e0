"""Evaluators for dense prediction: semantic-segmentation IoU and COCO mAP.

* :class:`SegmentationMetric` accumulates a ``num_classes × num_classes`` confusion matrix (``torch.bincount`` over
  ``num_classes · target + prediction`` for every labelled pixel) and reports what mmsegmentation reports on
  ADE20K: ``aAcc`` (pixel accuracy over all labelled pixels), ``mIoU`` and ``mAcc`` (means over the classes that
  occur in the ground truth or the predictions, as mmseg's ``nanmean``), and the per-class IoU and accuracy.
* :class:`CocoEvaluator` collects detections in the COCO results format (``[x, y, w, h]`` boxes, RLE-encoded
  masks) and scores them with pycocotools' ``COCOeval``: box and mask AP, AP50, AP75, APs/m/l — the numbers the
  papers report on COCO.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["SegmentationMetric", "CocoEvaluator", "masks_to_rle", "COCO_STAT_NAMES"]

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class SegmentationMetric:
    """Confusion-matrix IoU for semantic segmentation.

    Args:
        num_classes: number of classes ``C``; labels are ``0 … C-1``.
        ignore_index: target value that marks unlabelled pixels (255 in ADE20K after ``reduce_zero_label``).
        class_names: optional names for the per-class table.

    ``update(pred, target)`` takes predicted labels ``(…)`` (or logits ``(B, C, H, W)``, arg-maxed over dim 1) and
    targets of the same spatial shape. The matrix ``confusion[t, p]`` counts pixels of true class ``t``
    predicted as ``p``. With ``I = diag``, ``IoU_c = I_c / (Σ_p conf[c, p] + Σ_t conf[t, c] − I_c)``; a class with
    an empty union (absent from targets and predictions) has IoU NaN and does not enter the mean.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"expected {num_classes} class names, got {len(class_names)}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() == target.dim() + 1:  # logits (B, C, H, W)
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to("cpu", torch.int64)
        target = target.reshape(-1).to("cpu", torch.int64)
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(
                f"target labels must lie in [0, {self.num_classes}) or equal ignore_index={self.ignore_index}; "
                f"got values in [{int(target.min())}, {int(target.max())}]"
            )
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted labels must lie in [0, {self.num_classes}), got max {int(pred.max())}")
        self.confusion += torch.bincount(self.num_classes * target + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def merge(self, other: "SegmentationMetric | torch.Tensor") -> None:
        """Add another metric's (or a raw) confusion matrix, e.g. gathered from other DDP ranks."""
        conf = other.confusion if isinstance(other, SegmentationMetric) else other
        self.confusion += conf.to("cpu", torch.int64)

    def compute(self) -> dict:
        conf = self.confusion.double()
        inter = conf.diag()
        gt = conf.sum(1)
        pr = conf.sum(0)
        union = gt + pr - inter
        iou = inter / union  # NaN where union == 0
        acc = inter / gt  # NaN where the class is absent from the targets
        total = conf.sum()
        a_acc = (inter.sum() / total).item() if total > 0 else float("nan")
        return {
            "aAcc": a_acc,
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "IoU": {n: float(v) for n, v in zip(self.class_names, iou.tolist(), strict=False)},
            "Acc": {n: float(v) for n, v in zip(self.class_names, acc.tolist(), strict=False)},
        }

    def table(self) -> str:
        """The per-class IoU / accuracy table, as mmseg prints it (in percent)."""
        res = self.compute()
        width = max(5, *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
        for n in self.class_names:
            lines.append(f"{n:<{width}}  {100 * res['IoU'][n]:6.2f}  {100 * res['Acc'][n]:6.2f}")
        lines.append(
            f"{'mean':<{width}}  {100 * res['mIoU']:6.2f}  {100 * res['mAcc']:6.2f}   aAcc {100 * res['aAcc']:.2f}"
        )
        return "\n".join(lines)


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


def masks_to_rle(masks: np.ndarray | torch.Tensor) -> list[dict]:
    """Binary masks ``(N, H, W)`` → COCO compressed RLEs (``counts`` decoded to ``str`` so they serialise to JSON)."""
    from pycocotools import mask as mask_util

    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {masks.shape}")
    # pycocotools wants a Fortran-ordered (H, W, N) uint8 array
    rles = mask_util.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0))) if len(masks) else []
    out = []
    for rle in rles:
        rle = dict(rle)
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        out.append(rle)
    return out


class CocoEvaluator:
    """COCO box / mask mAP through pycocotools.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` (or the path of a COCO-format JSON file).
        iou_types: ``("bbox",)`` or ``("bbox", "segm")``.
        label_to_cat_id: maps the model's contiguous labels (1 … K; 0 is background in torchvision) to the
            dataset's category ids; identity if None.

    ``update(image_ids, outputs)`` takes torchvision-style outputs — per image a dict with ``boxes`` ``(N, 4)``
    in ``x1, y1, x2, y2`` pixels of the original image, ``scores`` ``(N,)``, ``labels`` ``(N,)`` and optionally
    ``masks`` ``(N, 1, H, W)`` probabilities (thresholded at ``mask_threshold``) or booleans.
    ``compute()`` returns ``{"bbox": {"AP": …, "AP50": …, …}, "segm": {…}}`` in [0, 1] (pycocotools reports −1
    for a statistic with no ground truth, e.g. APl when no object is large; kept as is).
    """

    def __init__(
        self,
        coco_gt,
        iou_types: Iterable[str] = ("bbox",),
        label_to_cat_id: dict[int, int] | None = None,
        mask_threshold: float = 0.5,
    ):
        from pycocotools.coco import COCO

        if not isinstance(coco_gt, COCO):
            with contextlib.redirect_stdout(io.StringIO()):
                coco_gt = COCO(str(coco_gt))
        self.coco_gt = coco_gt
        self.iou_types = tuple(iou_types)
        for t in self.iou_types:
            if t not in ("bbox", "segm"):
                raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {t!r}")
        self.label_to_cat_id = label_to_cat_id
        self.mask_threshold = mask_threshold
        self.results: list[dict] = []
        self.image_ids: list[int] = []
        self.last_eval: dict = {}

    def reset(self) -> None:
        self.results, self.image_ids = [], []

    def _cat(self, label: int) -> int:
        return int(self.label_to_cat_id[label]) if self.label_to_cat_id is not None else int(label)

    def update(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        for image_id, out in zip(image_ids, outputs, strict=False):
            image_id = int(image_id)
            self.image_ids.append(image_id)
            boxes = out["boxes"].detach().cpu().double()
            if len(boxes) == 0:
                continue
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            scores = out["scores"].detach().cpu().tolist()
            labels = out["labels"].detach().cpu().tolist()
            rles = None
            if "segm" in self.iou_types:
                if "masks" not in out:
                    raise ValueError("segm evaluation needs 'masks' in the outputs")
                masks = out["masks"].detach().cpu()
                if masks.dim() == 4:
                    masks = masks[:, 0]
                if masks.dtype != torch.bool:
                    masks = masks > self.mask_threshold
                rles = masks_to_rle(masks)
            for k in range(len(scores)):
                res = {
                    "image_id": image_id,
                    "category_id": self._cat(labels[k]),
                    "bbox": [round(v, 3) for v in xywh[k]],
                    "score": float(scores[k]),
                }
                if rles is not None:
                    res["segmentation"] = rles[k]
                self.results.append(res)

    def add_results(self, results: Iterable[dict], image_ids: Iterable[int] = ()) -> None:
        """Add detections already in the COCO results format (e.g. gathered from other ranks)."""
        self.results.extend(results)
        self.image_ids.extend(int(i) for i in image_ids)

    def compute(self, verbose: bool = False) -> dict:
        from pycocotools.cocoeval import COCOeval

        img_ids = sorted(set(self.image_ids)) or sorted(self.coco_gt.getImgIds())
        out: dict = {}
        self.last_eval = {}
        for iou_type in self.iou_types:
            results = copy.deepcopy(self.results)
            if iou_type == "segm":
                # as detectron2: without the box, pycocotools takes a detection's area from its mask
                for r in results:
                    r.pop("bbox", None)
            else:
                for r in results:
                    r.pop("segmentation", None)
            if not results:
                out[iou_type] = {k: 0.0 for k in COCO_STAT_NAMES}
                continue
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                coco_dt = self.coco_gt.loadRes(results)
                ev = COCOeval(self.coco_gt, coco_dt, iou_type)
                ev.params.imgIds = img_ids
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            if verbose:
                averages = [line for line in buf.getvalue().splitlines() if "Average" in line]
                print(f"COCO {iou_type}:\n" + "\n".join(averages))
            self.last_eval[iou_type] = ev
            out[iou_type] = {k: float(v) for k, v in zip(COCO_STAT_NAMES, ev.stats, strict=False)}
        return out


def flat_coco_metrics(res: dict) -> dict:
    """``{"bbox": {"AP": …}, "segm": {…}}`` → ``{"bbox_AP": …, "segm_AP": …}`` (NaN for pycocotools' −1)."""
    flat = {}
    for iou_type, stats in res.items():
        for k, v in stats.items():
            flat[f"{iou_type}_{k}"] = float("nan") if v < 0 else v
    return flat
