"""COCO-format detection / instance-segmentation data for torchvision's detectors.

``CocoDetection(image_dir, ann_file)`` reads a COCO instances JSON (``images``, ``annotations`` with ``bbox``
``[x, y, w, h]`` and ``segmentation`` as polygons or RLE, ``categories``) and yields
``(image float (3, H, W) in [0, 1], target)`` with the target torchvision's detectors take:
``boxes`` ``(N, 4)`` x1y1x2y2, ``labels`` ``(N,)`` contiguous 1…K (0 is background), ``masks`` ``(N, H, W)``
uint8 (when ``with_masks``), ``image_id``, ``area``, ``iscrowd``. Crowd annotations and boxes under one pixel are
dropped from training targets (as torchvision's detection reference does); evaluation uses the JSON itself.

The standard 1x pipeline (mmdetection's ``Resize((1333, 800), keep_ratio)``, ``RandomFlip(0.5)``, ``Normalize``,
``Pad(size_divisor=32)``) is split the torchvision way: the flip happens here (:class:`DetTrainTransform`);
resizing to ``min_size``/``max_size``, normalisation and padding to 32 are done inside the model by
``GeneralizedRCNNTransform``, which also maps predictions back to the original image size.
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from sofa.data.folder import load_image
from sofa.data.skipping import SkippedSamples, load_first_usable
from sofa.errors import UserError

__all__ = ["CocoDetection", "DetTrainTransform", "det_collate"]


class DetTrainTransform:
    """Horizontal flip with probability ``flip_prob`` of image, boxes and masks.

    Draws from Python's global ``random`` (the training loop seeds it per sample, so runs are reproducible).
    """

    def __init__(self, flip_prob: float = 0.5):
        self.flip_prob = flip_prob

    def __call__(self, img: torch.Tensor, target: dict):
        if random.random() < self.flip_prob:
            w = img.shape[-1]
            img = img.flip(-1)
            target = dict(target)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return img, target


class CocoDetection(torch.utils.data.Dataset):
    """A COCO instances file and its image folder.

    Args:
        image_dir: folder the ``file_name`` entries are relative to.
        ann_file: the COCO JSON.
        transform: ``transform(image, target) -> (image, target)`` (e.g. :class:`DetTrainTransform`).
        with_masks: decode instance masks (Mask R-CNN).
        remove_empty: drop images with no usable annotation (for training).

    An image that cannot be read (truncated, empty, not an image, not the size the JSON gives) or whose
    transform fails is skipped and counted (:attr:`num_skipped`) with a warning; the next usable image takes its
    place. An annotation file that cannot be read is a :class:`UserError`.
    """

    def __init__(
        self,
        image_dir,
        ann_file,
        transform=None,
        with_masks: bool = True,
        remove_empty: bool = False,
        max_samples: int | None = None,
    ):
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {self.ann_file} not found (see `sofa data shapes DIR`)")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.ann_file))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
            what = f"{type(err).__name__}: {err}"
            raise UserError(f"cannot read the COCO annotation file {self.ann_file}: {what}") from None
        self.transform = transform
        self.with_masks = with_masks
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.num_classes = len(self.cat_ids)  # without background
        ids = sorted(self.coco.getImgIds())
        if remove_empty:
            ids = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns.get(i, []))]
        if max_samples is not None:
            ids = ids[:max_samples]
        self.ids = ids
        self.skipped = SkippedSamples(len(self.ids), "image")

    @staticmethod
    def _usable(ann: dict) -> bool:
        return not ann.get("iscrowd", 0) and ann["bbox"][2] >= 1 and ann["bbox"][3] >= 1

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_skipped(self) -> int:
        """Images skipped so far (unreadable, or their transform failed), by this process and its DataLoader
        workers."""
        return self.skipped.count

    def _path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def _read(self, index: int) -> torch.Tensor:
        """The image as float (3, H, W) in [0, 1]; raises when it cannot be read or is not the annotated size."""
        info = self.coco.imgs[self.ids[index]]
        pil = load_image(self._path(index))
        annotated = (info.get("width"), info.get("height"))
        if None not in annotated and pil.size != annotated:
            raise ValueError(
                f"the image is {pil.size[0]}x{pil.size[1]} but {self.ann_file.name} says {annotated[0]}x{annotated[1]}"
            )
        return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)

    def _prepare(self, index: int, img: torch.Tensor):
        image_id = self.ids[index]
        h, w = img.shape[1:]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {
            "boxes": boxes[keep],
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64)[keep],
            "image_id": image_id,
            "area": torch.tensor([a.get("area", 0.0) for a in anns], dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        }
        if self.with_masks:
            if anns:
                masks = np.stack([self.coco.annToMask(a) for a in anns])
            else:
                masks = np.zeros((0, h, w), np.uint8)
            target["masks"] = torch.from_numpy(masks)[keep]
        if self.transform is not None:
            img, target = self.transform(img, target)
        return img, target

    def __getitem__(self, index: int):
        """``(image, target)`` of image ``index``, or of the next usable one when it cannot be read or its
        transform fails (skipped, counted in :attr:`num_skipped`, with a warning)."""
        return load_first_usable(
            index,
            len(self.ids),
            self._read,
            self._prepare,
            lambda i: str(self._path(i)),
            self.skipped,
            str(self.image_dir),
        )


def det_collate(batch):
    """Detection batches stay lists (images differ in size; the model's transform batches them)."""
    images, targets = zip(*batch, strict=False)
    return list(images), list(targets)
