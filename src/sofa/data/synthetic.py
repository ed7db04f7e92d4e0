"""A small synthetic image-folder dataset (for tests, examples and trying an option in seconds).

Each class is a colour and a bar orientation, with noise, so a model can learn it in a few steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 220), (40, 210, 210)]


def synthetic_image(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.float64)
    c = np.array(_COLOURS[cls % len(_COLOURS)], dtype=np.float64)
    w = max(size // 4, 1)
    o = int(rng.integers(0, size - w + 1))
    if (cls // len(_COLOURS)) % 2 == 0:
        img[:, o : o + w] = c
    else:
        img[o : o + w, :] = c
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: str | Path,
    num_classes: int = 3,
    train_per_class: int = 8,
    val_per_class: int = 4,
    size: int = 16,
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write ``root/{train,val}/class_<k>/<i>.<fmt>``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(num_classes):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(synthetic_image(k, size, rng)).save(d / f"{i:04d}.{fmt}")
    return root
