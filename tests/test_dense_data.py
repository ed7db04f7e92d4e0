"""The synthetic shapes set is valid COCO and ADE-style data; the dense datasets and pipelines do what they say."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_SEGMENTATION

pytest.importorskip("pycocotools")

from sofa.dense.det_data import CocoDetection, DetTrainTransform, det_collate  # noqa: E402
from sofa.dense.seg_data import (  # noqa: E402
    SegEvalTransform,
    SegmentationDataset,
    SegPipeline,
    SegTrainTransform,
    reduce_zero_label,
    seg_eval_collate,
    seg_train_collate,
)
from sofa.dense.shapes import SHAPE_CLASSES, write_shapes  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num_train=6, num_val=3, min_size=64, max_size=96, seed=1)
    return root


def test_shapes_is_valid_coco_and_matches_the_label_maps(shapes):
    from pycocotools.coco import COCO

    for split in ("training", "validation"):
        coco = COCO(str(shapes / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert len(coco.getImgIds()) == (6 if split == "training" else 3)
        assert len(coco.getAnnIds()) >= len(coco.getImgIds())  # at least one object per image
        for img in coco.loadImgs(coco.getImgIds()):
            rgb = Image.open(shapes / "images" / split / img["file_name"])
            assert rgb.mode == "RGB" and rgb.size == (img["width"], img["height"])
            label = np.array(Image.open(shapes / "annotations" / split / img["file_name"].replace(".jpg", ".png")))
            assert label.dtype == np.uint8 and label.shape == (img["height"], img["width"])
            assert set(np.unique(label)) <= {0, 1, 2, 3}
            rebuilt = np.zeros_like(label)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                m = coco.annToMask(ann).astype(bool)
                assert m.sum() == ann["area"] > 0
                x, y, w, h = ann["bbox"]
                ys, xs = np.nonzero(m)
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
                assert not rebuilt[m].any()  # objects do not overlap
                rebuilt[m] = ann["category_id"]
            assert np.array_equal(rebuilt, label)  # the two formats agree pixel for pixel
    meta = json.loads((shapes / "classes.json").read_text())
    assert meta["classes"] == list(SHAPE_CLASSES)


def test_shapes_images_are_not_square_and_deterministic(shapes, tmp_path):
    sizes = {Image.open(p).size for p in (shapes / "images" / "training").glob("*.jpg")}
    assert any(w != h for w, h in sizes)
    write_shapes(tmp_path, num_train=6, num_val=3, min_size=64, max_size=96, seed=1)
    a = (shapes / "annotations" / "instances_training.json").read_text()
    assert a == (tmp_path / "annotations" / "instances_training.json").read_text()


def test_sofa_data_shapes_command(tmp_path):
    from sofa.cli import main

    assert (
        main(
            [
                "data",
                "shapes",
                str(tmp_path / "s"),
                "--train",
                "2",
                "--val",
                "1",
                "--min-size",
                "48",
                "--max-size",
                "64",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "s" / "annotations" / "training").glob("*.png"))) == 2
    assert (tmp_path / "s" / "annotations" / "instances_validation.json").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep me")
    assert main(["data", "shapes", str(tmp_path / "other")]) == 2  # refuses to write into a foreign folder


# ---------------------------------------------------------------------------------------- segmentation data
def test_reduce_zero_label_and_ignore_index():
    label = np.array([[0, 1, 2], [150, 255, 3]], np.uint8)
    assert reduce_zero_label(label).tolist() == [[255, 0, 1], [149, 255, 2]]


def test_segmentation_dataset_label_conventions(shapes):
    plain = SegmentationDataset(shapes, "training")
    assert plain.class_names == ["background", *SHAPE_CLASSES] and plain.num_classes == 4
    reduced = SegmentationDataset(shapes, "training", reduce_zero_label=True)
    assert reduced.class_names == list(SHAPE_CLASSES)
    a, b = plain[0], reduced[0]
    lab, red = a["label"], b["label"]
    assert torch.equal(red[lab == 0], torch.full_like(red[lab == 0], 255))
    assert torch.equal(red[lab > 0], lab[lab > 0] - 1)
    assert a["image"].dtype == torch.uint8 and a["image"].shape[1:] == lab.shape


def test_segmentation_dataset_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADE20K-style layout"):
        SegmentationDataset(tmp_path, "training")


def test_seg_train_pipeline_shapes_and_ignore_padding(shapes):
    pipe = SegPipeline(scale=(256, 64), ratio_range=(0.5, 2.0), crop_size=(64, 80))
    ds = SegmentationDataset(shapes, "training", SegTrainTransform(pipe, rng=random.Random(0)))
    batch = seg_train_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 64, 80) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 64, 80) and batch["label"].dtype == torch.int64
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, 255}
    # small rescale: the crop is padded, and padding is ignored
    pipe_small = SegPipeline(scale=(64, 32), ratio_range=(1.0, 1.0), crop_size=(64, 64), photometric=False)
    item = SegmentationDataset(shapes, "training", SegTrainTransform(pipe_small, rng=random.Random(0)))[0]
    assert item["image"].shape == (3, 64, 64) and (item["label"][32:] == 255).all()


def test_seg_train_pipeline_keeps_labels_aligned_with_pixels():
    # an image whose left half is class 1 (red) and right half class 2 (blue): after rescale/crop/flip, each
    # labelled pixel must still sit on its colour
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    img[0, :, :30] = 255
    img[2, :, 30:] = 255
    label = torch.ones(40, 60, dtype=torch.int64)
    label[:, 30:] = 2
    pipe = SegPipeline(
        scale=(120, 40),
        ratio_range=(0.7, 1.5),
        crop_size=(32, 32),
        photometric=False,
        cat_max_ratio=1.0,
        mean=(0, 0, 0),
        std=(1 / 255, 1 / 255, 1 / 255),
    )
    tf = SegTrainTransform(pipe, rng=random.Random(3))
    for _ in range(10):
        x, y = tf(img, label)
        red, blue = x[0] > 200, x[2] > 200
        assert (y[red & ~blue] != 2).all() and (y[blue & ~red] != 1).all()


def test_seg_eval_pipeline_and_collate(shapes):
    pipe = SegPipeline(scale=(256, 64))
    ds = SegmentationDataset(shapes, "validation", SegEvalTransform(pipe))
    batch = seg_eval_collate([ds[0], ds[1]])
    for (h, w), ori, lab in zip(batch["img_shape"], batch["ori_shape"], batch["label"], strict=False):
        assert min(h, w) == 64 or max(h, w) == 256  # keep-ratio rescale to the bound
        assert tuple(lab.shape) == tuple(ori)  # labels stay at the original size
    assert batch["image"].shape[2:] == (max(s[0] for s in batch["img_shape"]), max(s[1] for s in batch["img_shape"]))


# ---------------------------------------------------------------------------------------- detection data
def test_coco_detection_dataset_and_flip(shapes):
    ds = CocoDetection(shapes / "images" / "training", shapes / "annotations" / "instances_training.json")
    assert ds.num_classes == 3 and ds.label_to_cat_id == {1: 1, 2: 2, 3: 3}
    img, t = ds[0]
    assert img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    n = len(t["boxes"])
    assert t["masks"].shape == (n, *img.shape[1:]) and t["labels"].shape == (n,)
    for box, mask in zip(t["boxes"], t["masks"], strict=False):  # boxes are the tight boxes of the masks
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    flipped_img, ft = DetTrainTransform(flip_prob=1.0)(img, t)
    assert torch.equal(flipped_img, img.flip(-1))
    for box, mask in zip(ft["boxes"], ft["masks"], strict=False):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    images, targets = det_collate([ds[0], ds[1]])
    assert len(images) == 2 and targets[1]["image_id"] == ds.ids[1]


# ---------------------------------------------------------------------------------------- bad files
TRAIN_BAD_FOR_SEG = {1, 3, 5, 6, 7, 8}  # every kind of bad file below
TRAIN_BAD_FOR_DET = {1, 5, 8}  # the bad images (detection reads no label maps)


@pytest.fixture(scope="module")
def shapes_with_bad_files(tmp_path_factory):
    """A shapes set whose training split has a truncated, an empty and a resized image, and an empty, a
    garbage and a truncated label map; validation has one empty label map."""
    root = tmp_path_factory.mktemp("bad_shapes")
    write_shapes(root, num_train=12, num_val=3, min_size=48, max_size=64, seed=3)
    img, ann = root / "images" / "training", root / "annotations" / "training"

    def name(i, ext):
        return f"shapes_training_{i:05d}.{ext}"

    (img / name(1, "jpg")).write_bytes((img / name(1, "jpg")).read_bytes()[:400])  # truncated image
    (ann / name(3, "png")).write_bytes(b"")  # empty label map
    (img / name(5, "jpg")).write_bytes(b"")  # empty image
    (ann / name(6, "png")).write_bytes(b"this is no PNG at all")  # unreadable label map
    (ann / name(7, "png")).write_bytes((ann / name(7, "png")).read_bytes()[:60])  # truncated label map
    with Image.open(img / name(8, "jpg")) as im:  # the image no longer matches its label map and the JSON
        im.resize((im.width + 5, im.height)).save(img / name(8, "jpg"))
    (root / "annotations" / "validation" / "shapes_validation_00000.png").write_bytes(b"")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_segmentation_skips_and_counts_bad_files(shapes_with_bad_files, workers, capfd):
    root = shapes_with_bad_files
    pipe = SegPipeline(scale=(128, 48), crop_size=(48, 48))
    ds = SegmentationDataset(root, "training", SegTrainTransform(pipe, rng=random.Random(0)))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=lambda b: b)
    items = [item for batch in loader for item in batch]
    assert len(items) == len(ds) == 12  # every index yields a sample: the next usable one takes its place
    assert {int(item["name"][-5:]) for item in items}.isdisjoint(TRAIN_BAD_FOR_SEG)
    assert ds.num_skipped == len(TRAIN_BAD_FOR_SEG)  # each bad sample once, across workers
    err = capfd.readouterr().err
    for i in TRAIN_BAD_FOR_SEG:
        assert f"shapes_training_{i:05d}" in err
    for _ in range(2):  # a second epoch meets them again without counting them again
        [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == len(TRAIN_BAD_FOR_SEG)


def test_detection_skips_and_counts_bad_images(shapes_with_bad_files, capfd):
    root = shapes_with_bad_files
    ds = CocoDetection(
        root / "images" / "training", root / "annotations" / "instances_training.json", DetTrainTransform(0.5)
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=det_collate)
    targets = [t for _, batch in loader for t in batch]
    assert len(targets) == len(ds) == 12
    names = {ds.coco.imgs[t["image_id"]]["file_name"] for t in targets}
    assert not names & {f"shapes_training_{i:05d}.jpg" for i in TRAIN_BAD_FOR_DET}
    assert ds.num_skipped == len(TRAIN_BAD_FOR_DET)
    err = capfd.readouterr().err
    for i in TRAIN_BAD_FOR_DET:
        assert f"skipping unreadable image {ds.image_dir / f'shapes_training_{i:05d}.jpg'}" in err
    assert "but instances_training.json says" in err  # the resized image: what it is and what the JSON says


def test_detection_unreadable_annotation_file_is_a_user_error(shapes_with_bad_files, tmp_path):
    from sofa.errors import UserError

    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [')
    with pytest.raises(UserError, match="cannot read the COCO annotation file"):
        CocoDetection(shapes_with_bad_files / "images" / "training", bad)


def test_segmentation_training_survives_bad_files_and_reports_them(shapes_with_bad_files, tmp_path, capsys):
    pytest.importorskip("segmentation_models_pytorch")
    from sofa.cli import main

    run = tmp_path / "seg"
    assert (
        main(
            [
                "train",
                "--task",
                "segmentation",
                "--data",
                str(shapes_with_bad_files),
                *TINY_SEGMENTATION,
                "--epochs",
                "1",
                "--threads",
                "1",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert f"{len(TRAIN_BAD_FOR_SEG) + 1} unreadable image(s) were skipped" in (run / "log.txt").read_text()


# ---------------------------------------------------------------------------------------- sofa data shapes DIR
def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_shapes_into_an_existing_dataset_refuses_or_replaces_it_whole(tmp_path, capsys):
    from sofa.cli import main

    out = tmp_path / "s"
    small = ["--min-size", "48", "--max-size", "64"]
    assert main(["data", "shapes", str(out), "--train", "4", "--val", "2", *small]) == 0
    before = {f: (out / f).read_bytes() for f in _files(out)}
    # without --overwrite: refused, nothing touched
    assert main(["data", "shapes", str(out), "--train", "2", "--val", "1", "--seed", "5", *small]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {f: (out / f).read_bytes() for f in _files(out)} == before
    # with --overwrite: exactly the new dataset, no file of the old one left, no temporary folder beside it
    assert main(["data", "shapes", str(out), "--train", "2", "--val", "1", "--seed", "5", "--overwrite", *small]) == 0
    fresh = tmp_path / "fresh"
    write_shapes(fresh, num_train=2, num_val=1, min_size=48, max_size=64, seed=5)
    assert _files(out) == _files(fresh)
    assert all((out / f).read_bytes() == (fresh / f).read_bytes() for f in _files(fresh))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "s"]
    # a folder that is not a shapes dataset is never replaced, even with --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["data", "shapes", str(other), "--overwrite"]) == 2
    assert (other / "notes.txt").read_text() == "keep me" and _files(other) == ["notes.txt"]
    # an existing empty folder is filled
    (tmp_path / "empty").mkdir()
    assert main(["data", "shapes", str(tmp_path / "empty"), "--train", "1", "--val", "1", *small]) == 0
    assert (tmp_path / "empty" / "classes.json").is_file()


def test_shapes_interrupted_while_writing_leaves_the_old_dataset_whole(tmp_path, monkeypatch):
    import sofa.dense.shapes as shapes_module

    out = tmp_path / "s"
    write_shapes(out, num_train=3, num_val=1, min_size=48, max_size=64, seed=0)
    before = {f: (out / f).read_bytes() for f in _files(out)}
    real, calls = shapes_module.render_sample, []

    def fails_on_the_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(shapes_module, "render_sample", fails_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        write_shapes(out, num_train=5, num_val=1, min_size=48, max_size=64, seed=1, overwrite=True)
    assert {f: (out / f).read_bytes() for f in _files(out)} == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # the half-written copy is gone
