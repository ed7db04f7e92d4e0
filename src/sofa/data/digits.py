"""The bundled default dataset: scikit-learn's handwritten digits (no download, it ships with the package).

1797 grayscale 8×8 images with values 0–16, ten classes. Images are scaled to 0–255, upscaled to the training
image size (bilinear) and made 3-channel so that any ImageNet-style model takes them. The train/test split is a
stratified split fixed by a seed, so every run (and every rank of a distributed run) sees the same split.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

DIGITS_CLASSES = [str(i) for i in range(10)]


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 [N,8,8], labels int64 [N]), "test": (...)}``, stratified, fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


class DigitsDataset(Dataset):
    """One split of the digits as PIL RGB images of ``img_size`` (upscaled once, kept in memory).

    ``dataset[i]`` is ``(transform(image), label)``; without a transform the image is a PIL image.
    """

    classes = DIGITS_CLASSES

    def __init__(
        self,
        split: str = "train",
        img_size: int | tuple[int, int] = 32,
        transform: Callable | None = None,
        seed: int = 0,
        test_fraction: float = 0.2,
    ):
        if split in ("val", "validation"):
            split = "test"
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'/'val', got {split!r}")
        images, labels = digits_split(seed, test_fraction)[split]
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.images = [Image.fromarray(im, mode="L").resize((w, h), Image.BILINEAR).convert("RGB") for im in images]
        self.targets = labels.tolist()
        self.transform = transform
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
