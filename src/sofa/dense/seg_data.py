"""ADE20K-style semantic-segmentation data: the dataset, mmsegmentation's standard pipelines, and collation.

Layout (ADE20K's ``ADEChallengeData2016`` and ``sofa data shapes`` both follow it)::

    root/images/<split>/<stem>.jpg        RGB images
    root/annotations/<split>/<stem>.png   label maps, one uint8 class index per pixel

``reduce_zero_label=True`` (ADE20K's convention, label 0 = "other") maps 0 to ``ignore_index`` and every other
label ``l`` to ``l − 1``, exactly as mmseg's ``LoadAnnotations(reduce_zero_label=True)``.

Training pipeline (mmseg's ADE20K config, ``train_pipeline``): random rescale keeping the aspect ratio to
``scale × r`` with ``r ∈ ratio_range`` (long side ≤ ``scale[0]·r`` and short side ≤ ``scale[1]·r``); random crop
to ``crop_size`` where no single class covers more than ``cat_max_ratio`` of the crop (10 tries); horizontal flip
with probability 0.5; photometric distortion (brightness ±32, contrast and saturation ×[0.5, 1.5], hue ±18°
of OpenCV's 180-degree scale, each with probability 0.5, contrast before or after the rest); normalisation with the
ImageNet mean and std; padding to ``crop_size`` (image 0, label ``ignore_index``).
Evaluation: rescale keeping the ratio to ``scale`` (r = 1), normalise; the label stays at its original size and
the prediction is resized back to it (mmseg evaluates at the original resolution).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sofa.data.folder import load_image
from sofa.data.skipping import SkippedSamples, load_first_usable

__all__ = [
    "ADE20K_CLASSES",
    "SegPipeline",
    "SegmentationDataset",
    "SegTrainTransform",
    "SegEvalTransform",
    "seg_train_collate",
    "seg_eval_collate",
    "reduce_zero_label",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)


def reduce_zero_label(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """ADE20K's convention: 0 → ``ignore_index``, ``l`` → ``l − 1`` (an ``ignore_index`` stays ignored)."""
    label = label.astype(np.int64)
    out = label - 1
    out[label == 0] = ignore_index
    out[label == ignore_index] = ignore_index
    return out


@dataclass
class SegPipeline:
    """Sizes of the standard pipelines (mmseg's ADE20K 512×512 defaults)."""

    scale: tuple[int, int] = (2048, 512)  # (long side, short side) bound at ratio 1
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN
    std: Sequence[float] = IMAGENET_DEFAULT_STD
    ignore_index: int = 255

    @classmethod
    def preset(cls, name: str) -> "SegPipeline":
        if name in ("ade20k", "ade", "default"):
            return cls()
        if name == "shapes":  # the synthetic images are 96–160 px
            return cls(scale=(512, 128), crop_size=(128, 128))
        raise ValueError(f"unknown segmentation pipeline preset {name!r} (known: ade20k, shapes)")


def _rescale_size(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` keep-ratio rule: the largest size with long side ≤ scale[0], short side ≤ scale[1]."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _resize(img: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int]):
    img = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return img, label


def _normalise(img: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=img.dtype).view(3, 1, 1) * 255
    s = torch.tensor(std, dtype=img.dtype).view(3, 1, 1) * 255
    return (img - m) / s


class _PhotoMetricDistortion:
    """mmseg's ``PhotoMetricDistortion`` on a float RGB image in [0, 255] (torchvision ops for the HSV part)."""

    def __init__(self, brightness_delta: float = 32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_delta: float = 18):
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast, self.saturation = contrast, saturation

    def __call__(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        if rng.random() < 0.5:
            img = (img + rng.uniform(-self.brightness_delta, self.brightness_delta)).clamp(0, 255)
        contrast_first = rng.random() < 0.5

        def contrast(x):
            if rng.random() < 0.5:
                x = (x * rng.uniform(*self.contrast)).clamp(0, 255)
            return x

        if contrast_first:
            img = contrast(img)
        x = img / 255
        if rng.random() < 0.5:
            x = TF.adjust_saturation(x, rng.uniform(*self.saturation))
        if rng.random() < 0.5:
            x = TF.adjust_hue(x, rng.uniform(-self.hue_delta, self.hue_delta) / 180)
        img = x.clamp(0, 1) * 255
        if not contrast_first:
            img = contrast(img)
        return img


class SegTrainTransform:
    """The training pipeline (see the module docstring). Takes ``(uint8 (3, H, W), int64 (H, W))``.

    Draws from Python's global ``random`` unless given ``rng`` (the training loop seeds it per sample).
    """

    def __init__(self, pipe: SegPipeline, rng: random.Random | None = None):
        self.pipe = pipe
        self.rng = rng if rng is not None else random
        self.photo = _PhotoMetricDistortion()

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = self.pipe.crop_size
        y0 = self.rng.randint(0, max(h - ch, 0))
        x0 = self.rng.randint(0, max(w - cw, 0))
        return y0, min(y0 + ch, h), x0, min(x0 + cw, w)

    def __call__(self, img: torch.Tensor, label: torch.Tensor):
        p = self.pipe
        h, w = img.shape[-2:]
        r = self.rng.uniform(*p.ratio_range)
        size = _rescale_size(h, w, (p.scale[0] * r, p.scale[1] * r))
        img, label = _resize(img, label, size)
        h, w = size
        # random crop, avoiding crops dominated by one class (mmseg: cat_max_ratio, 10 tries)
        box = self._crop_box(h, w)
        if p.cat_max_ratio < 1.0:
            for _ in range(10):
                crop = label[box[0] : box[1], box[2] : box[3]]
                counts = torch.bincount(crop[crop != p.ignore_index].flatten())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < p.cat_max_ratio:
                    break
                box = self._crop_box(h, w)
        img, label = img[:, box[0] : box[1], box[2] : box[3]], label[box[0] : box[1], box[2] : box[3]]
        if self.rng.random() < p.flip_prob:
            img, label = img.flip(-1), label.flip(-1)
        if p.photometric:
            img = self.photo(img, self.rng)
        img = _normalise(img, p.mean, p.std)
        ch, cw = p.crop_size
        ph, pw = ch - img.shape[1], cw - img.shape[2]
        if ph > 0 or pw > 0:
            img = F.pad(img, (0, max(pw, 0), 0, max(ph, 0)), value=0.0)
            label = F.pad(label, (0, max(pw, 0), 0, max(ph, 0)), value=p.ignore_index)
        return img.contiguous(), label.contiguous()


class SegEvalTransform:
    """Evaluation: keep-ratio rescale to ``scale``, normalise; the label is left at its original size."""

    def __init__(self, pipe: SegPipeline):
        self.pipe = pipe

    def __call__(self, img: torch.Tensor, label: torch.Tensor):
        h, w = img.shape[-2:]
        img, _ = _resize(img, None, _rescale_size(h, w, self.pipe.scale))
        return _normalise(img, self.pipe.mean, self.pipe.std), label


class SegmentationDataset(torch.utils.data.Dataset):
    """Images and PNG label maps in the ADE20K layout.

    Args:
        root: dataset root (holds ``images/`` and ``annotations/``).
        split: sub-folder name (``training`` / ``validation`` for ADE20K and the shapes set).
        transform: called as ``transform(image uint8 (3, H, W), label int64 (H, W))``; returns (image, label).
        reduce_zero_label: ADE20K's 0 → ignore, l → l − 1.
        num_classes / class_names: the label set; read from ``root/classes.json`` when present, else ADE20K's 150
            classes when ``reduce_zero_label`` and nothing else is given.
    Items are dicts ``{"image", "label", "name", "ori_shape"}``. A sample whose image or label map cannot be read
    (truncated, empty, not an image, not single-channel, not the image's size) or whose transform fails is
    skipped and counted (:attr:`num_skipped`) with a warning; the next usable sample takes its place.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transform=None,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        max_samples: int | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        ann_dir, img_dir = self.root / "annotations" / split, self.root / "images" / split
        if not ann_dir.is_dir() or not img_dir.is_dir():
            raise FileNotFoundError(
                f"expected an ADE20K-style layout with {img_dir} and {ann_dir} (see `sofa data shapes DIR`)"
            )
        images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMG_EXTENSIONS}
        self.samples = []
        for ann in sorted(ann_dir.glob("*.png")):
            if ann.stem not in images:
                raise FileNotFoundError(f"label map {ann} has no image {img_dir / ann.stem}.*")
            self.samples.append((images[ann.stem], ann))
        if not self.samples:
            raise FileNotFoundError(f"no label maps (*.png) in {ann_dir}")
        if max_samples is not None:
            self.samples = self.samples[:max_samples]
        self.class_names = list(class_names) if class_names is not None else self._default_classes()
        self.num_classes = len(self.class_names)
        self.skipped = SkippedSamples(len(self.samples), "sample")

    def _default_classes(self) -> list[str]:
        meta = self.root / "classes.json"
        if meta.is_file():
            classes = json.loads(meta.read_text())["classes"]
            return list(classes) if self.reduce_zero_label else ["background", *classes]
        if self.reduce_zero_label:
            return list(ADE20K_CLASSES)
        raise ValueError(f"cannot tell the classes of {self.root}: pass class_names (or add classes.json)")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Samples skipped so far (an unreadable image or label map, or a failed transform), by this process and
        its DataLoader workers."""
        return self.skipped.count

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image (uint8 (3, H, W)) and label map (int64 (H, W)) of sample ``index``; raises when a file cannot
        be read or the two do not fit together."""
        img_path, ann_path = self.samples[index]
        img = torch.from_numpy(np.asarray(load_image(img_path), dtype=np.uint8).copy()).permute(2, 0, 1)
        with Image.open(ann_path) as ann:
            label = np.asarray(ann, dtype=np.uint8)
        if label.ndim != 2:
            raise ValueError(f"label map {ann_path} must be single-channel (mode L or P), got shape {label.shape}")
        label = reduce_zero_label(label, self.ignore_index) if self.reduce_zero_label else label.astype(np.int64)
        label = torch.from_numpy(np.ascontiguousarray(label))
        if label.shape != img.shape[1:]:
            raise ValueError(f"{ann_path} is {tuple(label.shape)} but its image is {tuple(img.shape[1:])}")
        return img, label

    def _prepare(self, index: int, sample: tuple[torch.Tensor, torch.Tensor]) -> dict:
        img, label = sample
        ori_shape = tuple(label.shape)
        if self.transform is not None:
            img, label = self.transform(img, label)
        return {"image": img, "label": label, "name": self.samples[index][0].stem, "ori_shape": ori_shape}

    def _name(self, index: int) -> str:
        img_path, ann_path = self.samples[index]
        return f"{img_path} (label map {ann_path})"

    def __getitem__(self, index: int) -> dict:
        """Sample ``index``, or the next usable one when its files cannot be read or its transform fails (skipped,
        counted in :attr:`num_skipped`, with a warning)."""
        return load_first_usable(
            index,
            len(self.samples),
            self.load,
            self._prepare,
            self._name,
            self.skipped,
            str(self.root / "images" / self.split),
        )


def seg_train_collate(batch: list[dict]) -> dict:
    return {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch])}


def seg_eval_collate(batch: list[dict]) -> dict:
    """Pads the (rescaled) images of a batch to a common size; labels stay a list at their original sizes."""
    shapes = [tuple(b["image"].shape[1:]) for b in batch]
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    images = torch.stack([F.pad(b["image"], (0, w - s[1], 0, h - s[0])) for b, s in zip(batch, shapes, strict=True)])
    return {
        "image": images,
        "img_shape": shapes,
        "label": [b["label"] for b in batch],
        "ori_shape": [b["ori_shape"] for b in batch],
        "name": [b["name"] for b in batch],
    }
