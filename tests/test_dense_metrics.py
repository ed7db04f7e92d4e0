"""The dense evaluators are right: perfect predictions score 1, hand-computed small cases score what they should."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sofa.dense.metrics import CocoEvaluator, SegmentationMetric, masks_to_rle

pycocotools = pytest.importorskip("pycocotools")


# --------------------------------------------------------------------------- segmentation
def test_seg_perfect_prediction_scores_one():
    target = torch.randint(0, 5, (2, 17, 23))
    target[0, :3] = 255  # ignored pixels
    pred = target.clone()
    pred[target == 255] = 0  # whatever the model says on ignored pixels must not matter
    m = SegmentationMetric(5)
    m.update(pred, target)
    res = m.compute()
    assert res["mIoU"] == 1.0 and res["aAcc"] == 1.0 and res["mAcc"] == 1.0
    assert all(v == 1.0 for v in res["IoU"].values())


def test_seg_hand_checked_case():
    # 3 classes, one row of 8 pixels plus one ignored pixel.
    target = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 0, 1]])
    m = SegmentationMetric(3, class_names=["a", "b", "c"])
    m.update(pred, target)
    # confusion[t, p]: a→a 2, a→b 1; b→b 2, b→c 1; c→c 1, c→a 1
    assert m.confusion.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    res = m.compute()
    # IoU a: 2 / (3 + 3 - 2) = 0.5; b: 2 / (3 + 3 - 2) = 0.5; c: 1 / (2 + 2 - 1) = 1/3
    assert res["IoU"] == pytest.approx({"a": 0.5, "b": 0.5, "c": 1 / 3})
    assert res["mIoU"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert res["aAcc"] == pytest.approx(5 / 8)
    assert res["Acc"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 1 / 2})
    assert "mean" in m.table()


def test_seg_absent_class_is_left_out_of_the_mean_and_logits_accepted():
    target = torch.tensor([[[0, 0, 1, 1]]])
    logits = torch.zeros(1, 4, 1, 4)  # 4 classes; classes 2 and 3 never occur nor are predicted
    logits[0, 0, 0, :2] = 1
    logits[0, 1, 0, 2:] = 1
    m = SegmentationMetric(4)
    m.update(logits, target)
    res = m.compute()
    assert res["mIoU"] == 1.0
    assert math.isnan(res["IoU"]["2"]) and math.isnan(res["IoU"]["3"])


def test_seg_accumulates_and_merges_like_one_big_update():
    preds = [torch.randint(0, 4, (3, 8, 9)) for _ in range(3)]
    targets = [torch.randint(0, 4, (3, 8, 9)) for _ in range(3)]
    one = SegmentationMetric(4)
    one.update(torch.cat(preds), torch.cat(targets))
    parts = [SegmentationMetric(4) for _ in range(3)]
    for m, p, t in zip(parts, preds, targets, strict=False):
        m.update(p, t)
    for m in parts[1:]:
        parts[0].merge(m)
    assert torch.equal(one.confusion, parts[0].confusion)


def test_seg_rejects_out_of_range_labels():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match="target labels"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


# --------------------------------------------------------------------------- COCO
def _coco_gt(tmp_path, anns, height=40, width=50, images=(1,)):
    from pycocotools.coco import COCO

    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": height, "width": width} for i in images],
        "annotations": [dict(a, id=k + 1, iscrowd=0) for k, a in enumerate(anns)],
        "categories": [{"id": 3, "name": "x"}, {"id": 7, "name": "y"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return COCO(str(path))


def _box_ann(image_id, cat, x, y, w, h, img_h=40, img_w=50):
    mask = np.zeros((img_h, img_w), np.uint8)
    mask[y : y + h, x : x + w] = 1
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": [x, y, w, h],
        "area": float(w * h),
        "segmentation": masks_to_rle(mask[None])[0],
    }


def _out(boxes, scores, labels, masks=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels),
    }
    if masks is not None:
        out["masks"] = torch.from_numpy(np.stack(masks)).float()[:, None] if len(masks) else torch.zeros(0, 1, 40, 50)
    return out


def _mask(x, y, w, h):
    m = np.zeros((40, 50), np.uint8)
    m[y : y + h, x : x + w] = 1
    return m


def test_coco_perfect_predictions_score_one(tmp_path):
    anns = [_box_ann(1, 3, 2, 3, 10, 12), _box_ann(1, 7, 20, 5, 15, 20), _box_ann(2, 3, 5, 5, 30, 30)]
    gt = _coco_gt(tmp_path, anns, images=(1, 2))
    ev = CocoEvaluator(gt, ("bbox", "segm"), label_to_cat_id={1: 3, 2: 7})
    ev.update(
        [1, 2],
        [
            _out([[2, 3, 12, 15], [20, 5, 35, 25]], [0.9, 0.8], [1, 2], [_mask(2, 3, 10, 12), _mask(20, 5, 15, 20)]),
            _out([[5, 5, 35, 35]], [0.7], [1], [_mask(5, 5, 30, 30)]),
        ],
    )
    res = ev.compute()
    for t in ("bbox", "segm"):
        assert res[t]["AP"] == pytest.approx(1.0)
        assert res[t]["AP50"] == pytest.approx(1.0) and res[t]["AP75"] == pytest.approx(1.0)


def test_coco_hand_checked_partial_overlap(tmp_path):
    # One object, one detection with IoU 0.72 (box [0,0,10,10] vs [0,0,10,7.2]; mask 10x10 vs 10x7 rows → 0.7):
    # matched at IoU thresholds 0.50…0.70 (5 of 10) → AP 0.5, AP50 1, AP75 0.
    gt = _coco_gt(tmp_path, [_box_ann(1, 3, 0, 0, 10, 10)])
    ev = CocoEvaluator(gt, ("bbox",), label_to_cat_id={1: 3, 2: 7})
    ev.update([1], [_out([[0, 0, 10, 7.2]], [0.9], [1])])
    res = ev.compute()["bbox"]
    assert res["AP"] == pytest.approx(0.5)
    assert res["AP50"] == pytest.approx(1.0) and res["AP75"] == pytest.approx(0.0)
    # masks: IoU 70/100 = 0.70 exactly, matched at 0.50…0.70 (pycocotools matches at IoU >= threshold)
    ev = CocoEvaluator(gt, ("segm",), label_to_cat_id={1: 3, 2: 7})
    ev.update([1], [_out([[0, 0, 10, 7]], [0.9], [1], [_mask(0, 0, 10, 7)])])
    assert ev.compute()["segm"]["AP"] == pytest.approx(0.5)


def test_coco_hand_checked_missed_object_and_false_positive(tmp_path):
    # Two objects; the top-scored detection is exact, the second is a false positive elsewhere, object 2 is
    # missed. Recall stops at 0.5 with precision 1 → the 101-point AP is 51/101 at every IoU threshold.
    gt = _coco_gt(tmp_path, [_box_ann(1, 3, 0, 0, 10, 10), _box_ann(1, 3, 30, 20, 10, 10)])
    ev = CocoEvaluator(gt, ("bbox",), label_to_cat_id={1: 3, 2: 7})
    ev.update([1], [_out([[0, 0, 10, 10], [15, 25, 25, 35]], [0.9, 0.8], [1, 1])])
    assert ev.compute()["bbox"]["AP"] == pytest.approx(51 / 101)
    # a wrong class never matches: AP of category 3 is 0, category 7 has no ground truth (left out)
    ev = CocoEvaluator(gt, ("bbox",), label_to_cat_id={1: 3, 2: 7})
    ev.update([1], [_out([[0, 0, 10, 10]], [0.9], [2])])
    assert ev.compute()["bbox"]["AP"] == pytest.approx(0.0)


def test_coco_no_detections_scores_zero(tmp_path):
    gt = _coco_gt(tmp_path, [_box_ann(1, 3, 0, 0, 10, 10)])
    ev = CocoEvaluator(gt, ("bbox", "segm"))
    ev.update([1], [_out([], [], [], [])])
    res = ev.compute()
    assert res["bbox"]["AP"] == 0.0 and res["segm"]["AP"] == 0.0


def test_masks_to_rle_round_trip():
    from pycocotools import mask as mask_util

    masks = np.random.default_rng(0).random((3, 13, 17)) > 0.5
    rles = masks_to_rle(torch.from_numpy(masks))
    json.dumps(rles)  # serialisable
    back = mask_util.decode([dict(r, counts=r["counts"].encode()) for r in rles])
    assert np.array_equal(back.transpose(2, 0, 1), masks)
