"""Readers for the Long Range Arena data a user has on disk, as map-style ``torch`` datasets.

:func:`open_lra_dataset` finds the layout under a folder by itself. An item is ``(ids, label)``: ``ids`` a 1-D
LongTensor of token ids (ids of :mod:`sofa.data.lra.vocab`, padding 0, not padded), ``label`` an ``int``; for
document retrieval ``ids`` is the pair ``(ids_1, ids_2)``. :func:`collate_lra` pads a batch.

Layouts, by task (``split`` is ``train``, ``val`` or ``test``; ``dev``/``eval``/``valid`` mean ``val``):

* the LRA release (``lra_release/``, or any folder below it):
  ``listops-1000/basic_{train,val,test}.tsv`` (``Source<TAB>Target`` header);
  ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (five tab-separated columns label, id1, id2, text1, text2,
  no header, no quoting); ``pathfinder32/<curv_baseline|curv_contour_length_9|curv_contour_length_14>/`` with
  ``metadata/<n>.npy`` — text files despite the name, one image a line: folder, file name, a number, the label —
  and the PNGs they name (empty PNGs, which the release has, are skipped and counted);
* text: the IMDB tree ``aclImdb/{train,test}/{neg,pos}/*.txt`` (labels 0 and 1; like LRA, ``val`` is the test
  set since IMDB has no validation split);
* image: torchvision's ``cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``, ``test_batch``), made
  grayscale as LRA does; ``train`` is the first 90% of the training images (45,000), ``val`` the rest;
* any task: the pickles of the Nyströmformer / Skyformer / xformers LRA harness, ``{name}.{train,dev,test}.pickle``
  (``listops``, ``text``, ``retrieval``, ``image``, ``pathfinder32-curv_contour_length_14``, ...): lists of
  dicts with ``input_ids_0`` (``input_ids_1`` for retrieval) and ``label``, read through a restricted unpickler;
  their ids are the harness's own (for ListOps not this package's table) and are used as they are, trailing
  padding zeros dropped for the text tasks;
* listops, text, retrieval: the user's own ``{split}.tsv`` / ``{split}.csv`` (with a header) or
  ``{split}.jsonl`` — or the path of one such file — with a text column (``text``, ``source``, ``sentence``,
  ``input`` or ``document``; ``text1`` and ``text2`` for retrieval) and an integer ``label`` / ``target`` column.

Rows that cannot be used (a wrong number of columns, a label that is not a class, a token outside the
vocabulary, an empty document or image) are skipped when the dataset is opened: ``dataset.skipped`` counts
them and one warning says why. A missing layout, or one with no usable row, raises ``UserError``.

Pathfinder has no official split: the images of a difficulty (metadata files in numeric order, lines in file
order, empty images left out) are shuffled with a fixed seed (``numpy.random.default_rng(0)``) and cut 80/10/10
like LRA's ``[:80%]``, ``[80%:90%]``, ``[90%:]``.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from sofa.data.lra.safe_pickle import load_data_pickle
from sofa.data.lra.vocab import (
    BYTE_VOCAB_SIZE,
    DEFAULT_MAX_LEN,
    LISTOPS_CLASSES,
    LISTOPS_IGNORED,
    LISTOPS_VOCAB,
    LISTOPS_VOCAB_SIZE,
    PIXEL_VOCAB_SIZE,
    encode_bytes,
    encode_listops,
    pad_batch,
)
from sofa.errors import UserError

TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "eval": "val",
    "test": "test",
}
PATHFINDER_DIFFICULTIES = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}
#: LRA's grayscale weights (``tf.image.rgb_to_grayscale``)
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)
NUM_CLASSES = {"listops": LISTOPS_CLASSES, "text": 2, "retrieval": 2, "image": 10, "pathfinder": 2}
TEXT_COLUMNS = ("text", "source", "sentence", "input", "document")
PAIR_COLUMNS = (("text1", "text2"), ("source1", "source2"))
LABEL_COLUMNS = ("label", "target", "labels", "class")

_LISTOPS_TOKENS = frozenset(LISTOPS_VOCAB) | LISTOPS_IGNORED
_MAX_EXAMPLES = 3  # bad rows named in the warning


def canonical_split(split: str) -> str:
    try:
        return _SPLIT_ALIASES[split.lower()]
    except KeyError:
        raise UserError(f"unknown split {split!r}; expected train, val (dev, eval, valid) or test") from None


class _Skips:
    """Counts the rows a reader could not use, by reason, and names the first few."""

    def __init__(self, source: str):
        self.source = source
        self.reasons: Counter = Counter()
        self.examples: list[str] = []

    def add(self, where: str, reason: str) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> None:
        if self.total:
            reasons = "; ".join(f"{n} x {reason}" for reason, n in self.reasons.most_common(5))
            warnings.warn(
                f"{self.source}: skipped {self.total} unusable row(s) ({reasons}); first: {' | '.join(self.examples)}",
                stacklevel=3,
            )


class LRADataset(Dataset):
    """Base of the readers: what every one of them reports.

    Attributes: ``task``, ``split``, ``max_len`` (ids per sequence at most; None: whole sequences), ``vocab_size``
    (ids are below it; 0 is padding for the text tasks), ``num_classes``, ``skipped`` (unusable rows left out
    when opening), ``layout`` (which on-disk format was read), ``path``.
    """

    layout = "?"

    def __init__(self, path, task: str, split: str, max_len: int | None):
        if task not in TASKS:
            raise UserError(f"unknown LRA task {task!r}; expected one of {', '.join(TASKS)}")
        if max_len is not None and max_len < 1:
            raise UserError(f"max_len must be at least 1, got {max_len}")
        if task in ("image", "pathfinder") and max_len is not None:
            raise UserError(f"{task}: images are read whole (one id per pixel); max_len applies to the text tasks")
        self.path = Path(path)
        self.task = task
        self.split = canonical_split(split)
        self.max_len = max_len
        self.num_classes = NUM_CLASSES[task]
        self.vocab_size = {
            "listops": LISTOPS_VOCAB_SIZE,
            "text": BYTE_VOCAB_SIZE,
            "retrieval": BYTE_VOCAB_SIZE,
            "image": PIXEL_VOCAB_SIZE,
            "pathfinder": PIXEL_VOCAB_SIZE,
        }[task]
        self.skipped = 0

    def _finish(self, skips: _Skips, count: int) -> None:
        self.skipped = skips.total
        if count == 0:
            detail = f" (skipped {skips.total}: {'; '.join(skips.examples)})" if skips.total else ""
            raise UserError(f"{skips.source}: no usable {self.task} rows{detail}")
        skips.report()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, split={self.split!r}, samples={len(self)}, "
            f"layout={self.layout!r}, path='{self.path}', skipped={self.skipped})"
        )


# --- tab-separated files read by line offsets ----------------------------------------------------------------


class _LineFile(LRADataset):
    """A text file of one sample per line, indexed by byte offset and read on demand (the LRA files are large)."""

    def _index(self, file: Path, parse: Callable[[bytes], int], header: bytes | None = None) -> None:
        self.file = file
        skips = _Skips(str(file))
        offsets, labels = [], []
        with open(file, "rb") as f:
            pos = 0
            for lineno, line in enumerate(f, 1):
                start, pos = pos, pos + len(line)
                body = line.rstrip(b"\r\n")
                if not body.strip() or (lineno == 1 and header is not None and body == header):
                    continue
                try:
                    labels.append(parse(body))
                except ValueError as err:
                    skips.add(f"line {lineno}", str(err))
                    continue
                offsets.append(start)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._handle = None
        self._handle_pid = None
        self._finish(skips, len(offsets))

    def _line(self, index: int) -> bytes:
        if self._handle is None or self._handle_pid != os.getpid():  # one handle per DataLoader worker
            self._handle = open(self.file, "rb")
            self._handle_pid = os.getpid()
        self._handle.seek(int(self._offsets[index]))
        return self._handle.readline().rstrip(b"\r\n")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = state["_handle_pid"] = None
        return state

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    def __len__(self) -> int:
        return len(self._offsets)


def _parse_label(text: bytes | str, num_classes: int) -> int:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"label {text!r} is not a number") from None
    if value != int(value) or not 0 <= value < num_classes:
        raise ValueError(f"label {text!r} is not a class 0..{num_classes - 1}")
    return int(value)


def _check_listops_tokens(source: str) -> None:
    unknown = set(source.split()) - _LISTOPS_TOKENS
    if unknown:
        raise ValueError(f"tokens outside the ListOps vocabulary: {' '.join(sorted(unknown)[:3])}")
    if not source.strip():
        raise ValueError("empty expression")


class ListOpsTSV(_LineFile):
    """LRA's ``basic_{train,val,test}.tsv``: ``Source<TAB>Target`` rows (what ``sofa data listops`` writes)."""

    layout = "lra-listops"

    def __init__(self, file, split: str, max_len: int | None = None):
        super().__init__(file, "listops", split, max_len)

        def parse(body: bytes) -> int:
            fields = body.split(b"\t")
            if len(fields) != 2:
                raise ValueError(f"expected 2 tab-separated columns, found {len(fields)}")
            try:
                source = fields[0].decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("non-ASCII bytes in the expression") from None
            _check_listops_tokens(source)
            return _parse_label(fields[1], LISTOPS_CLASSES)

        self._index(Path(file), parse, header=b"Source\tTarget")

    def __getitem__(self, index: int):
        source = self._line(index).split(b"\t")[0].decode("ascii")
        return encode_listops(source, self.max_len), int(self.labels[index])


class AANPairsTSV(_LineFile):
    """LRA's ``new_aan_pairs.{train,eval,test}.tsv``: label, id1, id2, text1, text2; items are byte-id pairs."""

    layout = "lra-retrieval"

    def __init__(self, file, split: str, max_len: int | None = None):
        super().__init__(file, "retrieval", split, max_len)

        def parse(body: bytes) -> int:
            fields = body.split(b"\t")
            if len(fields) != 5:
                raise ValueError(f"expected 5 tab-separated columns, found {len(fields)}")
            if not fields[3] or not fields[4]:
                raise ValueError("an empty document")
            return _parse_label(fields[0], 2)

        self._index(Path(file), parse)

    def __getitem__(self, index: int):
        fields = self._line(index).split(b"\t")
        return (encode_bytes(fields[3], self.max_len), encode_bytes(fields[4], self.max_len)), int(self.labels[index])


# --- IMDB -----------------------------------------------------------------------------------------------------


class IMDBFolder(LRADataset):
    """The ``aclImdb/{train,test}/{neg,pos}/*.txt`` tree (label 0 neg, 1 pos), read as bytes on demand."""

    layout = "aclImdb"

    def __init__(self, root, split: str, max_len: int | None = None):
        super().__init__(root, "text", split, max_len)
        folder = Path(root) / ("train" if self.split == "train" else "test")
        skips = _Skips(str(folder))
        self.files: list[Path] = []
        labels = []
        for label, name in enumerate(("neg", "pos")):
            sub = folder / name
            if not sub.is_dir():
                raise UserError(f"{sub} is missing: the IMDB tree is aclImdb/{{train,test}}/{{neg,pos}}/*.txt")
            for file in sorted(sub.glob("*.txt")):
                if file.stat().st_size == 0:
                    skips.add(file.name, "an empty review")
                    continue
                self.files.append(file)
                labels.append(label)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._finish(skips, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return encode_bytes(self.files[index].read_bytes(), self.max_len), int(self.labels[index])


# --- CIFAR-10 -------------------------------------------------------------------------------------------------


def rgb_to_lra_grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) → uint8 gray (...), as ``tf.image.rgb_to_grayscale`` computes it.

    In float32: pixels scaled by 1/255, weighted 0.2989 R + 0.5870 G + 0.1140 B, scaled by 255.5 and truncated.
    """
    scaled = rgb.astype(np.float32) * np.float32(1.0 / 255)
    gray = scaled @ np.asarray(GRAYSCALE_WEIGHTS, dtype=np.float32)
    return (gray * np.float32(255.5)).astype(np.uint8)


class CIFAR10Gray(LRADataset):
    """torchvision's ``cifar-10-batches-py`` pickles (read with the restricted unpickler), grayscale, 1,024 ids."""

    layout = "cifar-10-batches-py"
    TRAIN_FRACTION = 0.9  # LRA: train[:90%] (45,000 images); the last 10% are the validation split

    def __init__(self, root, split: str, max_len: int | None = None):
        super().__init__(root, "image", split, max_len)
        root = Path(root)
        names = ["test_batch"] if self.split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        skips = _Skips(str(root))
        images, labels, positions = [], [], []
        total = 0
        for name in names:
            file = root / name
            if not file.is_file():
                raise UserError(f"{file} is missing: cifar-10-batches-py holds data_batch_1..5 and test_batch")
            batch = load_data_pickle(file, encoding="bytes")
            data = batch.get(b"data") if isinstance(batch, dict) else None
            batch_labels = batch.get(b"labels") if isinstance(batch, dict) else None
            if not isinstance(data, np.ndarray) or batch_labels is None or len(data) != len(batch_labels):
                raise UserError(
                    f"{file}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels' of one length)"
                )
            for row, (pixels, label) in enumerate(zip(data, batch_labels, strict=False)):
                total += 1
                if pixels.dtype != np.uint8 or pixels.size != 3072:
                    skips.add(f"{name} row {row}", f"{pixels.size} values of {pixels.dtype}, expected 3072 uint8")
                    continue
                if not isinstance(label, (int, np.integer)) or not 0 <= label < 10:
                    skips.add(f"{name} row {row}", f"label {label!r} is not a class 0..9")
                    continue
                images.append(pixels)
                labels.append(int(label))
                positions.append(total - 1)
        if self.split != "test":  # by position among all training images, so a bad one does not shift the split
            cut = int(total * self.TRAIN_FRACTION)
            keep = [i for i, p in enumerate(positions) if (p < cut) == (self.split == "train")]
            images, labels = [images[i] for i in keep], [labels[i] for i in keep]
        self._finish(skips, len(images))
        rgb = np.stack(images).reshape(-1, 3, 32 * 32).transpose(0, 2, 1)  # planes R, G, B → (N, pixels, 3)
        self.pixels = torch.from_numpy(rgb_to_lra_grayscale(rgb))
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.pixels[index].long(), int(self.labels[index])


# --- Pathfinder -----------------------------------------------------------------------------------------------


class PathfinderFolder(LRADataset):
    """One difficulty of LRA's Pathfinder release: ``metadata/<n>.npy`` text lines naming PNGs and labels."""

    layout = "lra-pathfinder"
    SPLIT_SEED = 0

    def __init__(self, root, split: str, max_len: int | None = None):
        super().__init__(root, "pathfinder", split, max_len)
        root = Path(root)
        meta = root / "metadata"
        files = [f for f in meta.glob("*.npy") if f.is_file()]
        if not files:
            raise UserError(f"{meta} has no *.npy metadata files")
        files.sort(key=lambda f: (0, int(f.stem), "") if f.stem.isdigit() else (1, 0, f.stem))
        skips = _Skips(str(root))
        paths, labels = [], []
        for file in files:
            text = file.read_bytes().decode("utf-8", errors="replace")
            for lineno, line in enumerate(text.split("\n"), 1):
                if not line.strip():
                    continue
                fields = line.split(" ")
                where = f"{file.name} line {lineno}"
                if len(fields) < 4:
                    skips.add(where, f"expected at least 4 space-separated fields, found {len(fields)}")
                    continue
                try:
                    label = _parse_label(fields[3], 2)
                except ValueError as err:
                    skips.add(where, str(err))
                    continue
                image = root / fields[0] / fields[1]
                try:
                    size = image.stat().st_size
                except OSError:
                    skips.add(where, "a missing image")
                    continue
                if size == 0:
                    skips.add(where, "an empty image")
                    continue
                paths.append(image)
                labels.append(label)
        n = len(paths)
        order = np.random.default_rng(self.SPLIT_SEED).permutation(n)
        cut = {"train": (0, int(n * 0.8)), "val": (int(n * 0.8), int(n * 0.9)), "test": (int(n * 0.9), n)}
        lo, hi = cut[self.split]
        chosen = np.sort(order[lo:hi])
        self.files = [paths[i] for i in chosen]
        self.labels = np.asarray([labels[i] for i in chosen], dtype=np.int64)
        self.unreadable = 0  # images that failed to decode when read (this process)
        self._finish(skips, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def _pixels(self, file: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(file) as img:
            gray = img if img.mode == "L" else img.convert("L")
            return torch.from_numpy(np.asarray(gray, dtype=np.uint8).reshape(-1).astype(np.int64))

    def __getitem__(self, index: int):
        for step in range(len(self.files)):  # an undecodable image: warn and take the next one
            i = (index + step) % len(self.files)
            try:
                return self._pixels(self.files[i]), int(self.labels[i])
            except (OSError, ValueError) as err:
                self.unreadable += 1
                print(f"warning: skipping unreadable image {self.files[i]}: {err}", file=sys.stderr, flush=True)
        raise UserError(f"{self.path}: none of its {len(self.files)} images could be decoded")


# --- the LRA harness's pickles --------------------------------------------------------------------------------


class HarnessPickle(LRADataset):
    """``{name}.{train,dev,test}.pickle`` of the Nyströmformer / Skyformer / xformers LRA code (restricted load)."""

    layout = "harness-pickle"

    def __init__(self, file, task: str, split: str, max_len: int | None = None):
        super().__init__(file, task, split, max_len)
        rows = load_data_pickle(file)
        if not isinstance(rows, list):
            raise UserError(f"{file}: expected a list of dicts, found {type(rows).__name__}")
        keys = ("input_ids_0", "input_ids_1") if task == "retrieval" else ("input_ids_0",)
        text = task in ("listops", "text", "retrieval")
        skips = _Skips(str(file))
        self.sequences: list[tuple[torch.Tensor, ...]] = []
        labels = []
        top = 0
        for row_index, row in enumerate(rows):
            where = f"row {row_index}"
            if not isinstance(row, dict) or any(k not in row for k in (*keys, "label")):
                skips.add(where, f"not a dict with {', '.join(keys)} and label")
                continue
            try:
                label = _parse_label(str(np.asarray(row["label"]).item()), self.num_classes)
                seqs = tuple(self._ids(row[k], text) for k in keys)
            except ValueError as err:
                skips.add(where, str(err))
                continue
            if any(len(s) == 0 for s in seqs):
                skips.add(where, "an empty sequence")
                continue
            top = max(top, *(int(s.max()) for s in seqs))
            self.sequences.append(seqs)
            labels.append(label)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.vocab_size = max(top + 1, PIXEL_VOCAB_SIZE if not text else 0)
        self._finish(skips, len(self.sequences))

    def _ids(self, value, text: bool) -> torch.Tensor:
        ids = np.asarray(value)
        if ids.ndim == 2 and not text:  # a (H, W) image
            ids = ids.reshape(-1)
        if ids.ndim != 1 or ids.dtype.kind not in "iub":
            raise ValueError(f"input ids of shape {ids.shape} and dtype {ids.dtype}, expected 1-D integers")
        if ids.size and ids.min() < 0:
            raise ValueError("negative input ids")
        if text:
            nonzero = np.flatnonzero(ids)
            ids = ids[: nonzero[-1] + 1 if nonzero.size else 0]  # the harness pads with trailing zeros
            if self.max_len is not None:
                ids = ids[: self.max_len]
        return torch.from_numpy(ids.astype(np.int64))

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int):
        seqs = self.sequences[index]
        return (seqs if len(seqs) == 2 else seqs[0]), int(self.labels[index])


# --- the user's own table -------------------------------------------------------------------------------------


def _pick_column(columns: list[str], candidates) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


class TextTable(LRADataset):
    """A user's ``.tsv`` / ``.csv`` (with a header) or ``.jsonl`` file with text and integer label columns."""

    layout = "table"

    def __init__(self, file, task: str, split: str, max_len: int | None = None):
        if task not in ("listops", "text", "retrieval"):
            raise UserError(f"{file}: tables hold text; task {task!r} reads images")
        super().__init__(file, task, split, max_len)
        file = Path(file)
        skips = _Skips(str(file))
        rows, columns = self._read(file)
        if task == "retrieval":
            pair = next(
                (p for p in (tuple(_pick_column(columns, (c,)) for c in pc) for pc in PAIR_COLUMNS) if None not in p),
                None,
            )
            text_columns = pair
            wanted = " and ".join(PAIR_COLUMNS[0])
        else:
            found = _pick_column(columns, TEXT_COLUMNS)
            text_columns = (found,) if found else None
            wanted = " or ".join(TEXT_COLUMNS)
        label_column = _pick_column(columns, LABEL_COLUMNS)
        if text_columns is None or label_column is None:
            raise UserError(
                f"{file}: needs a text column ({wanted}) and a label column "
                f"({' or '.join(LABEL_COLUMNS)}); found columns {columns}"
            )
        self.texts: list[tuple[str, ...]] = []
        labels = []
        for where, row in rows:
            if row is None:
                skips.add(where, "not a JSON object")
                continue
            texts = tuple(row.get(c) for c in text_columns)
            if any(not isinstance(t, str) or not t.strip() for t in texts):
                skips.add(where, "an empty or missing text")
                continue
            try:
                label = int(str(row.get(label_column)).strip())
                if label < 0:
                    raise ValueError
            except ValueError:
                skips.add(where, f"label {row.get(label_column)!r} is not an integer >= 0")
                continue
            if task == "listops":
                try:
                    _check_listops_tokens(texts[0])
                except ValueError as err:
                    skips.add(where, str(err))
                    continue
            self.texts.append(texts)
            labels.append(label)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._finish(skips, len(self.texts))
        if task != "listops":
            self.num_classes = max(2, int(self.labels.max()) + 1)
        elif self.labels.max() >= LISTOPS_CLASSES:
            raise UserError(f"{file}: ListOps labels are 0..9, found {int(self.labels.max())}")

    @staticmethod
    def _read(file: Path):
        """→ ``([(where, row dict or None)], column names)``."""
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            rows, columns = [], []
            with open(file, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    if not isinstance(row, dict):
                        row = None
                    elif not columns:
                        columns = list(row)
                    rows.append((f"line {lineno}", row))
            return rows, columns
        delimiter = "\t" if suffix == ".tsv" else ","
        limit = csv.field_size_limit()
        csv.field_size_limit(2**31 - 1)  # documents are longer than csv's default 128 KiB field limit
        try:
            with open(file, encoding="utf-8", errors="replace", newline="") as f:
                reader = csv.DictReader(f, delimiter=delimiter)
                columns = list(reader.fieldnames or [])
                rows = [(f"line {reader.line_num}", row) for row in reader]
        except csv.Error as err:
            raise UserError(f"{file}: not a readable {suffix[1:].upper()} file ({err})") from None
        finally:
            csv.field_size_limit(limit)
        return rows, columns

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int):
        texts = self.texts[index]
        if self.task == "listops":
            ids = encode_listops(texts[0], self.max_len)
        else:
            ids = tuple(encode_bytes(t, self.max_len) for t in texts)
            ids = ids if len(ids) == 2 else ids[0]
        return ids, int(self.labels[index])


TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl")


# --- finding the layout ---------------------------------------------------------------------------------------


def _bases(path: Path) -> list[Path]:
    """The folder itself and the LRA release folders that may sit below it."""
    out = [path]
    for sub in ("lra_release", "lra_release/lra_release"):
        if (path / sub).is_dir():
            out.append(path / sub)
    return out


def _pickle_names(task: str, folder_name: str) -> list[str]:
    if task == "pathfinder":
        return [f"pathfinder32-{folder_name}", f"pathfinder-{folder_name}"]
    return {"image": ["image", "cifar10"], "text": ["text", "imdb"]}.get(task, [task])


def open_lra_dataset(
    path, task: str, split: str = "train", max_len: int | None = None, *, difficulty: str = "hard"
) -> LRADataset:
    """Open one split of an LRA task from whatever layout ``path`` holds (see the module docstring).

    ``max_len``: ids per sequence at most (per document for retrieval); None uses LRA's
    (:data:`sofa.data.lra.vocab.DEFAULT_MAX_LEN`: 2,000 ListOps tokens, 4,000 bytes of text); images are whole.
    ``difficulty``: Pathfinder's ``easy`` / ``intermediate`` / ``hard`` (``curv_baseline`` /
    ``curv_contour_length_9`` / ``curv_contour_length_14``; LRA reports ``hard``), or the folder name itself.
    """
    if task not in TASKS:
        raise UserError(f"unknown LRA task {task!r}; expected one of {', '.join(TASKS)}")
    split = canonical_split(split)
    if max_len is None:
        max_len = DEFAULT_MAX_LEN.get(task)
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        return _open_file(path, task, split, max_len)
    folder_name = PATHFINDER_DIFFICULTIES.get(difficulty, difficulty)
    looked_for = []
    for base in _bases(path):
        for find in (_native_layout, _harness_pickle, _split_table):
            found, wanted = find(base, task, split, max_len, folder_name)
            if found is not None:
                return found
            if wanted:
                looked_for.append(wanted)
    unique = list(dict.fromkeys(looked_for))
    raise UserError(
        f"{path}: found no {task} data for split {split!r}; looked for {', '.join(unique)} "
        f"(in the folder and in lra_release/ below it)"
    )


def _open_file(path: Path, task: str, split: str, max_len: int | None) -> LRADataset:
    """A split from one file: the harness's pickle, LRA's ListOps TSV, or a table."""
    if path.suffix.lower() == ".pickle":
        return HarnessPickle(path, task, split, max_len)
    if path.suffix.lower() in TABLE_SUFFIXES:
        if task == "listops" and path.name.startswith("basic_") and path.suffix == ".tsv":
            return ListOpsTSV(path, split, max_len)
        return TextTable(path, task, split, max_len)
    raise UserError(f"{path}: expected a folder, a .pickle or a {'/'.join(TABLE_SUFFIXES)} file")


def _native_layout(
    base: Path, task: str, split: str, max_len: int | None, folder_name: str
) -> tuple[LRADataset | None, str | None]:
    """The task's data as LRA's release (or its source) lays it out, in ``base`` or the usual folder below;
    returns the dataset found (or None) and what was looked for (as each finder does)."""
    if task == "listops":
        for candidate in (base / f"basic_{split}.tsv", base / "listops-1000" / f"basic_{split}.tsv"):
            if candidate.is_file():
                return ListOpsTSV(candidate, split, max_len), None
        return None, f"listops-1000/basic_{split}.tsv"
    if task == "retrieval":
        name = f"new_aan_pairs.{'eval' if split == 'val' else split}.tsv"
        for candidate in (base / name, base / "tsv_data" / name):
            if candidate.is_file():
                return AANPairsTSV(candidate, split, max_len), None
        return None, f"tsv_data/{name}"
    if task == "pathfinder":
        for candidate in (base, base / folder_name, base / "pathfinder32" / folder_name):
            if (candidate / "metadata").is_dir() and (candidate.name == folder_name or candidate == base):
                return PathfinderFolder(candidate, split, max_len), None
        return None, f"pathfinder32/{folder_name}/metadata/*.npy"
    if task == "text":
        for candidate in (base, base / "aclImdb"):
            if (candidate / "train" / "pos").is_dir() or (candidate / "test" / "pos").is_dir():
                return IMDBFolder(candidate, split, max_len), None
        return None, "aclImdb/{train,test}/{neg,pos}/*.txt"
    for candidate in (base, base / "cifar-10-batches-py"):  # image
        if (candidate / "data_batch_1").is_file() or (candidate / "test_batch").is_file():
            return CIFAR10Gray(candidate, split, max_len), None
    return None, "cifar-10-batches-py/{data_batch_1..5,test_batch}"


def _harness_pickle(
    base: Path, task: str, split: str, max_len: int | None, folder_name: str
) -> tuple[LRADataset | None, str | None]:
    """The split as the LRA harness's input pipeline pickles it."""
    harness_split = {"train": "train", "val": "dev", "test": "test"}[split]
    names = _pickle_names(task, folder_name)
    for name in names:
        candidate = base / f"{name}.{harness_split}.pickle"
        if candidate.is_file():
            return HarnessPickle(candidate, task, split, max_len), None
    return None, f"{names[0]}.{harness_split}.pickle"


def _split_table(
    base: Path, task: str, split: str, max_len: int | None, folder_name: str
) -> tuple[LRADataset | None, str | None]:
    """A text task's split as a table named after the split (``train.tsv``, ``dev.csv``, ``test.jsonl`` …)."""
    if task not in ("listops", "text", "retrieval"):
        return None, None
    for alias in [a for a, s in _SPLIT_ALIASES.items() if s == split]:
        for suffix in TABLE_SUFFIXES:
            if (base / f"{alias}{suffix}").is_file():
                return TextTable(base / f"{alias}{suffix}", task, split, max_len), None
    return None, f"{split}.tsv|csv|jsonl"


def collate_lra(batch):
    """DataLoader ``collate_fn``: pads ids with 0 → ``(ids (B, L), labels (B,))``; for pairs
    ``((ids_1, ids_2), labels)``."""
    items, labels = zip(*batch, strict=False)
    labels = torch.tensor(labels, dtype=torch.long)
    if isinstance(items[0], tuple):
        return (pad_batch([a for a, _ in items]), pad_batch([b for _, b in items])), labels
    return pad_batch(list(items)), labels
