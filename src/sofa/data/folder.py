"""Image-folder datasets that refuse bad layouts clearly and survive bad files.

Layout: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>`` (any depth below the class folder).

* a missing or empty folder, no class folders, or a class folder without images: ``UserError`` saying what was
  expected and what was found;
* corrupt or truncated files, and images whose transform fails on one draw (an augmentation op that rejects it):
  skipped and counted (a warning names each; ``dataset.num_skipped`` counts them, across DataLoader workers),
  never fatal — the next usable image of the dataset takes its place (:mod:`sofa.data.skipping`);
* grayscale, palette, RGBA/LA, CMYK and 16-bit/32-bit images: converted to 8-bit RGB (16-bit values scaled,
  not clipped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from sofa.data.skipping import SkippedSamples, load_first_usable
from sofa.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Truncated files must fail loudly (and be skipped), not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image → 8-bit RGB. 16/32-bit integer and float images are rescaled to 0–255, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if arr.dtype.kind == "f":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            arr = (np.nan_to_num(arr) - lo) * scale
        else:
            arr = arr.astype(np.float64)
            # 16-bit data (the common case, also when PIL widens it to mode "I") spans 0..65535
            top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
            arr = arr * (255.0 / top)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # drop transparency onto black, as most pipelines do; keeps the pixel colours
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (0, 0, 0))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert to RGB (raises on corrupt/truncated files)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def find_classes(root: Path) -> list[str]:
    if not root.exists():
        raise UserError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data folder {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        files = [p.name for p in root.iterdir() if not p.name.startswith(".")][:5]
        found = f"found files {files}" if files else "it is empty"
        raise UserError(f"data folder {root} has no class folders: expected {root}/<class name>/<images>, {found}")
    return classes


def scan_class(folder: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith("."):
                files.append(os.path.join(dirpath, f))
    return files


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` → ``(transform(RGB image), class index)``, robust to bad files.

    ``classes`` fixes the class list and order (e.g. the training set's, for a validation set); a class folder
    missing under ``root`` then counts as empty.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, classes: list[str] | None = None):
        self.root = Path(root)
        found = find_classes(self.root)
        if classes is not None:
            extra = sorted(set(found) - set(classes))
            if extra:
                raise UserError(
                    f"{self.root} has class folders that the training set lacks: {extra[:10]}"
                    f"{' ...' if len(extra) > 10 else ''} (training classes: {len(classes)})"
                )
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples: list[tuple[str, int]] = []
        empty = []
        for c in self.classes:
            files = scan_class(self.root / c) if (self.root / c).is_dir() else []
            if not files:
                empty.append(c)
            samples.extend((f, self.class_to_idx[c]) for f in files)
        if empty:
            raise UserError(
                f"{len(empty)} class folder(s) under {self.root} hold no images ({', '.join(IMG_EXTENSIONS)}): "
                f"{empty[:10]}{' ...' if len(empty) > 10 else ''}; remove them or add images"
            )
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.skipped = SkippedSamples(len(samples), "image")

    @property
    def num_skipped(self) -> int:
        """Images skipped so far (unreadable, or their transform failed), by this process and its DataLoader
        workers."""
        return self.skipped.count

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> Image.Image:
        return load_image(self.samples[index][0])

    def _prepare(self, index: int, img: Image.Image):
        return (self.transform(img) if self.transform is not None else img), self.samples[index][1]

    def _name(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int):
        return load_first_usable(
            index, len(self.samples), self._read, self._prepare, self._name, self.skipped, str(self.root)
        )

    def verify(self, max_workers: int = 0) -> int:
        """Decode every file once (reduced-size decode for JPEG) and drop the unreadable ones.

        Returns how many were dropped. Used up front for datasets small enough that this is quick.
        """
        good, bad = [], 0
        for i, (path, target) in enumerate(self.samples):
            try:
                with Image.open(path) as img:
                    if img.format == "JPEG":
                        img.draft("RGB", (64, 64))
                    img.load()
                good.append((path, target))
            except Exception as err:
                self.skipped.unreadable(i, path, err)
                bad += 1
        if bad:
            present = {t for _, t in good}
            lost = [c for c, i in self.class_to_idx.items() if i not in present]
            if lost:
                raise UserError(f"every image of class folder(s) {lost[:10]} under {self.root} is unreadable")
            self.samples = good
            self.targets = [t for _, t in good]
            self.skipped.renumber(len(good))
        return bad


#: the folder names of each split of an image folder
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def image_folder_split(root: str | os.PathLike, split: str) -> Path:
    """``root/<split>`` alone (``val`` is also found as ``validation``): what ``sofa eval`` measures, which needs
    no train/ beside it. A clear error describing the layout where it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data folder {root} does not exist (expected {root}/{split}/<class>/…)"
            if not root.exists()
            else f"--data {root} is not a directory"
        )
    names = SPLIT_FOLDERS.get(split, (split,))
    found = next((root / n for n in names if (root / n).is_dir()), None)
    if found is None:
        entries = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:8]
        raise UserError(
            f"data folder {root} has no {split}/ folder: expected {root}/{split}/<class>/<images>; "
            f"found {', '.join(f'{e}/' for e in entries) if entries else 'no folders'}"
        )
    return found


def image_folder_splits(root: str | os.PathLike) -> tuple[Path, Path]:
    """``(root/train, root/val)``, or a clear error describing the expected layout."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist (expected {root}/train/<class>/… and {root}/val/<class>/…)")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a directory")
    train = root / "train"
    val = next((root / n for n in SPLIT_FOLDERS["val"] if (root / n).is_dir()), root / "val")
    if not train.is_dir():
        entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:8]
        raise UserError(
            f"data folder {root} has no train/ folder: expected {root}/train/<class>/<images> and "
            f"{root}/val/<class>/<images>; found {entries if entries else 'nothing'}"
        )
    if not val.is_dir():
        raise UserError(f"data folder {root} has no val/ folder: expected {root}/val/<class>/<images> beside train/")
    return train, val
