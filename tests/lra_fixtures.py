"""Tiny Long Range Arena data in each on-disk layout the readers take (for the reader and task tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from sofa.data.lra.listops import write_listops


def cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch as torchvision's cifar-10-batches-py holds it (rows of R, G, B planes)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {
        b"batch_label": b"fixture",
        b"labels": labels,
        b"data": planes,
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_listops_release(root: Path, train: int = 12, val: int = 4, test: int = 4) -> Path:
    write_listops(
        root / "lra_release" / "listops-1000",
        num_train=train,
        num_val=val,
        num_test=test,
        max_depth=4,
        max_args=4,
        min_length=6,
        max_length=40,
        show_progress=False,
    )
    return root


def write_imdb(root: Path, per_class: int = 3) -> Path:
    """aclImdb/{train,test}/{neg,pos}/*.txt with short distinct reviews."""
    for split in ("train", "test"):
        for polarity in ("neg", "pos"):
            folder = root / "aclImdb" / split / polarity
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}_7.txt").write_text(f"{split} {polarity} review number {i} " * (i + 1))
    return root


def write_aan_pairs(root: Path, rows_per_split: int = 4) -> Path:
    """tsv_data/new_aan_pairs.{train,eval,test}.tsv: label, id1, id2, text1, text2."""
    folder = root / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    for split in ("train", "eval", "test"):
        rows = [
            f"{i % 2}\tid{i}a\tid{i}b\t{split} first document {i}\tsecond one, {'x' * (i + 1)}"
            for i in range(rows_per_split)
        ]
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def write_cifar10(root: Path, per_batch: int = 2, seed: int = 0) -> Path:
    """cifar-10-batches-py with random 32×32 colour images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        cifar_batch(folder / name, images, [int(v) for v in rng.integers(0, 10, per_batch)])
    return root


def write_pathfinder(root: Path, images: int = 20, seed: int = 0) -> Path:
    """pathfinder32/curv_contour_length_14 with metadata/0.npy (a text file) and random 32×32 PNGs."""
    base = root / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    (base / "imgs" / "0").mkdir(parents=True)
    (base / "metadata").mkdir()
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(images):
        name = f"sample_{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(base / "imgs" / "0" / name)
        lines.append(f"imgs/0 {name} {i} {i % 2} 2 14 3 1.5 \n")
    (base / "metadata" / "0.npy").write_text("".join(lines))
    return root


WRITERS = {
    "listops": write_listops_release,
    "text": write_imdb,
    "retrieval": write_aan_pairs,
    "image": write_cifar10,
    "pathfinder": write_pathfinder,
}
