"""A synthetic dense-prediction dataset: coloured shapes on textured backgrounds, in both standard formats.

``write_shapes(root)`` writes::

    root/images/{training,validation}/shapes_{split}_00000.jpg      RGB images (sizes vary, non-square)
    root/annotations/{training,validation}/shapes_{split}_00000.png  ADE20K-style label maps (uint8)
    root/annotations/instances_{training,validation}.json            COCO instances (boxes, polygons, areas)
    root/classes.json                                                class names and label conventions

Every object is one of three classes (circle, square, triangle), drawn in a hue that depends on its class (with
jitter) over a background of smooth colour noise and stripes; objects of one image do not overlap, so every
instance mask is its whole shape. The label maps follow ADE20K's convention: 0 is "background/other" and the
classes are 1…3, so ``reduce_zero_label=True`` maps background to the ignore index (as for ADE20K) and
``reduce_zero_label=False`` trains a 4-class model with background as class 0. COCO category ids are 1…3.
The label maps are rasterised from the same polygons by pycocotools, so the two formats agree pixel for pixel.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from sofa.errors import UserError

__all__ = ["SHAPE_CLASSES", "write_shapes", "is_shapes_dataset", "render_sample"]

DATASET_NAME = "sofa-shapes"  # classes.json's "dataset"
SHAPE_CLASSES = ("circle", "square", "triangle")
_CLASS_HUES = (0.0, 0.33, 0.62)  # red-ish circles, green-ish squares, blue-ish triangles
SPLITS = ("training", "validation")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise (bilinearly upsampled coarse grid) plus faint stripes, values in [0, 1]."""
    gh, gw = rng.integers(2, 6), rng.integers(2, 6)
    grid = rng.uniform(0.15, 0.85, size=(gh, gw, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32) / 255
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(6, 20)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    img = img + rng.uniform(0.03, 0.12) * stripes[..., None] + rng.normal(0, 0.03, size=(h, w, 3))
    return img.clip(0, 1)


def _polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> list[float]:
    if cls == 0:  # circle
        n = 32
        pts = [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
    elif cls == 1:  # square (rotated)
        pts = [
            (
                cx + r * math.cos(angle + math.pi / 4 + k * math.pi / 2),
                cy + r * math.sin(angle + math.pi / 4 + k * math.pi / 2),
            )
            for k in range(4)
        ]
    else:  # triangle (equilateral, rotated)
        pts = [
            (cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    return [round(v, 2) for p in pts for v in p]


def render_sample(rng: np.random.Generator, height: int, width: int, max_objects: int = 4):
    """One image: ``(rgb uint8 (H, W, 3), label map uint8 (H, W), [(class 0..2, polygon, mask (H, W) bool)])``."""
    from pycocotools import mask as mask_util

    img = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    objects = []
    boxes: list[tuple[float, float, float, float]] = []
    n = int(rng.integers(1, max_objects + 1))
    side = min(height, width)
    for _ in range(n * 20):  # rejection sampling for non-overlapping objects
        if len(objects) == n:
            break
        cls = int(rng.integers(0, len(SHAPE_CLASSES)))
        r = float(rng.uniform(0.09, 0.22) * side)
        cx, cy = float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1))
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        poly = _polygon(cls, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        rle = mask_util.merge(mask_util.frPyObjects([poly], height, width))
        mask = mask_util.decode(rle).astype(bool)
        if mask.sum() < 16:
            continue
        hue = (_CLASS_HUES[cls] + rng.uniform(-0.06, 0.06)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        shade = 1 + 0.08 * rng.normal(size=(int(mask.sum()), 1))
        img[mask] = (colour[None] * shade).clip(0, 1)
        label[mask] = cls + 1
        boxes.append(box)
        objects.append((cls, poly, mask))
    return (img * 255).round().astype(np.uint8), label, objects


def is_shapes_dataset(root: str | Path) -> bool:
    """Whether ``root`` holds a dataset :func:`write_shapes` wrote (its ``classes.json`` says so)."""
    meta = Path(root) / "classes.json"
    try:
        return json.loads(meta.read_text()).get("dataset") == DATASET_NAME
    except (OSError, ValueError, AttributeError):
        return False


def write_shapes(
    root: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    min_size: int = 96,
    max_size: int = 160,
    max_objects: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write the dataset under ``root`` (see the module docstring); returns a summary dict.

    Image heights and widths are drawn independently from ``[min_size, max_size]``, so most images are
    non-square and few are multiples of 32.

    ``root`` ends up holding the new dataset whole or is left as it was, never a mix of old and new files: the
    dataset is written into a temporary folder beside ``root`` and renamed into place. ``root`` may be missing or
    an empty folder; an existing shapes dataset is replaced only with ``overwrite``, and any other non-empty
    folder is refused (:class:`UserError`) even then, so that nothing but a shapes dataset is ever deleted.
    """
    root = Path(root).resolve()  # a real name to rename (also for "." or a link to a folder)
    if root.exists():
        if not root.is_dir():
            raise UserError(f"{root} exists and is not a folder; choose a new or empty folder")
        if any(root.iterdir()):
            if not is_shapes_dataset(root):
                raise UserError(
                    f"{root} exists, is not empty and is not a shapes dataset; choose a new or empty folder"
                )
            if not overwrite:
                raise UserError(f"{root} already holds a shapes dataset; pass --overwrite to replace it whole")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".writing", dir=root.parent))
    try:
        summary = _write_shapes_into(staging, num_train, num_val, min_size, max_size, max_objects, seed)
        if root.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".replaced", dir=root.parent))
            os.replace(root, retired)  # onto the empty folder just made: a rename, atomic on POSIX
            os.replace(staging, root)
            shutil.rmtree(retired)
        else:
            os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {"root": str(root), **summary}


def _write_shapes_into(
    root: Path, num_train: int, num_val: int, min_size: int, max_size: int, max_objects: int, seed: int
) -> dict:
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    summary: dict = {"classes": list(SHAPE_CLASSES)}
    for split, count in zip(SPLITS, (num_train, num_val), strict=False):
        img_dir = root / "images" / split
        ann_dir = root / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
            rgb, label, objects = render_sample(rng, h, w, max_objects)
            stem = f"shapes_{split}_{i:05d}"
            Image.fromarray(rgb).save(img_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(ann_dir / f"{stem}.png")
            image_id = i + 1
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
            for cls, poly, mask in objects:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                x, y, bw, bh = (float(v) for v in mask_util.toBbox(rle))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cls + 1,
                        "segmentation": [poly],
                        "area": float(mask_util.area(rle)),
                        "bbox": [x, y, bw, bh],
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": "sofa synthetic shapes", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPE_CLASSES)],
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        summary[split] = {"images": len(images), "instances": len(annotations)}
    meta = {
        "dataset": DATASET_NAME,
        "classes": list(SHAPE_CLASSES),
        "label_map": {"0": "background"} | {str(k + 1): n for k, n in enumerate(SHAPE_CLASSES)},
        "note": "ADE20K-style label maps: 0 is background; reduce_zero_label=True ignores it (3 classes), "
        "reduce_zero_label=False keeps it as class 0 (4 classes). COCO category ids are 1..3.",
    }
    (root / "classes.json").write_text(json.dumps(meta, indent=2))
    return summary
