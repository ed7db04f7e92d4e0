"""A user's own labelled text (TSV, CSV, JSON lines or a JSON list), and the token datasets of text tasks.

:func:`open_labelled_text` reads ``--data FILE_OR_DIR`` for ``sofa train --task text-classification``:

* a folder with a training file ``train.{tsv,csv,jsonl,json}`` and a development file ``dev.*``,
  ``validation.*``, ``valid.*`` or ``val.*`` (optional ``test.*``); without a development file, or
* one file, which is split: a seeded shuffle (``numpy.random.default_rng(seed)``), the last ``val_fraction``
  (default 10%) is the development split.

A TSV file has a header and no quoting (like GLUE's); a CSV file a header and the usual quoting; a JSON-lines file
one object a line; a ``.json`` file a list of objects (e.g. the ``{"text", "class"}`` lists of the npm package
``sentiment``'s ``test/fixtures/``). The text column is ``--text-column`` (default: the first of ``text``,
``sentence``, ``sentence1``, ``question``, ``review``, ``message``, ``content``), an optional second text
``--text-pair-column`` and the label ``--label-column`` (default: the first of ``label``, ``class``, ``labels``,
``target``, ``category``, ``sentiment``). Classes are the training split's labels: integers in numeric order
where every label is one, else strings in sorted order.

Rows that cannot be used are skipped and counted by reason: an empty or missing label or text, a wrong column
count, a line that is not JSON, a development label the training split never had.

:class:`TextPairDataset` turns ``(text_a, text_b, label)`` examples into token ids with a tokenizer of the
``sofa.data.text`` interface (``encode_pair(a, b, max_len) -> (ids, token_type_ids)``, ``pad_id``), tokenized
when an item is read; :class:`PadCollate` pads a batch to its longest sequence.

A real labelled set that a registry package ships: the npm package ``sentiment`` (5.0.2, MIT, a 141 kB tarball)
holds the UCI "Sentiment Labelled Sentences" (Kotzias et al. 2015; 3 × 1,000 review sentences from Amazon, IMDB
and Yelp, half positive) as its benchmark fixtures. ``npm pack sentiment@5.0.2`` fetches the tarball;
``--data sentiment-5.0.2.tgz`` (or the extracted ``package/`` folder, or ``node_modules/sentiment``) reads it
without unpacking: :func:`read_sentiment_sentences` splits it, seeded, into train / val / test.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sofa.errors import UserError

__all__ = [
    "LabelledText",
    "open_labelled_text",
    "read_labelled_file",
    "TextPairDataset",
    "PadCollate",
    "TEXT_COLUMNS",
    "LABEL_COLUMNS",
]

TEXT_COLUMNS = ("text", "sentence", "sentence1", "question", "review", "message", "content")
LABEL_COLUMNS = ("label", "class", "labels", "target", "category", "sentiment")
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")
DEV_NAMES = ("dev", "validation", "valid", "val")

Example = tuple[str, "str | None", Any]


@dataclass
class LabelledText:
    """The splits of a labelled text data set: ``splits[name]`` lists ``(text_a, text_b or None, class id)``;
    ``labels`` are the class labels (index = class id); ``skipped[name]`` counts unusable rows by reason."""

    labels: list[str]
    splits: dict[str, list[Example]]
    skipped: dict[str, Counter] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    text_column: str = ""
    label_column: str = ""
    text_pair_column: str | None = None

    def describe_skipped(self) -> list[str]:
        out = []
        for split, c in self.skipped.items():
            if c:
                why = ", ".join(f"{n} {reason}" for reason, n in c.most_common())
                out.append(f"{self.sources.get(split, split)}: {sum(c.values())} row(s) skipped ({why})")
        return out


def _records(path: Path, skipped: Counter) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of one file as dicts, and its column names."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open(path, encoding="utf-8-sig", newline="", errors="replace") as f:
            if suffix == ".tsv":
                rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            else:
                rows = list(csv.reader(f))
        if not rows:
            raise UserError(f"{path} is empty: expected a header line and rows")
        header = [h.strip() for h in rows[0]]
        out = []
        for row in rows[1:]:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                skipped[f"with {len(row)} columns instead of {len(header)}"] += 1
                continue
            out.append(dict(zip(header, row, strict=True)))
        return out, header
    if suffix == ".jsonl":
        out, columns = [], {}
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    skipped["that are not JSON"] += 1
                    continue
                if not isinstance(obj, dict):
                    skipped["that are not JSON objects"] += 1
                    continue
                columns.update(dict.fromkeys(obj))
                out.append(obj)
        return out, list(columns)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not JSON ({err}): expected a list of objects") from None
        if isinstance(data, dict):  # {"data": [...]} and the like: the one list inside
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else data
        if not isinstance(data, list):
            raise UserError(f"{path} holds a JSON {type(data).__name__}: expected a list of objects")
        out, columns = [], {}
        for obj in data:
            if not isinstance(obj, dict):
                skipped["that are not JSON objects"] += 1
                continue
            columns.update(dict.fromkeys(obj))
            out.append(obj)
        return out, list(columns)
    raise UserError(f"{path}: expected a .tsv, .csv, .jsonl or .json file")


def _pick(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, path: Path) -> str:
    if given:
        if given not in columns:
            raise UserError(f"{path} has no {what} column {given!r}; its columns: {', '.join(columns)}")
        return given
    for c in candidates:
        if c in columns:
            return c
    raise UserError(
        f"{path}: no {what} column found among {', '.join(columns) or 'none'} (looked for "
        f"{', '.join(candidates)}); name it with --{what.replace(' ', '-')}-column"
    )


def read_labelled_file(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    text_pair_column: str | None = None,
) -> tuple[list[tuple[str, str | None, str]], Counter, tuple[str, str, str | None]]:
    """``(examples, skipped, (text column, label column, pair column))`` of one file; labels as strings."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"expected the file {path}: it does not exist")
    skipped: Counter = Counter()
    records, columns = _records(path, skipped)
    tc = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    lc = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    pc = text_pair_column
    if pc and pc not in columns:
        raise UserError(f"{path} has no text pair column {pc!r}; its columns: {', '.join(columns)}")
    out = []
    for r in records:
        label = r.get(lc)
        if label is None or (isinstance(label, str) and not label.strip()):
            skipped["without a label"] += 1
            continue
        text = r.get(tc)
        if not isinstance(text, str) or not text.strip():
            skipped["without a text"] += 1
            continue
        pair = r.get(pc) if pc else None
        if pc and not isinstance(pair, str):
            skipped["without a second text"] += 1
            continue
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        out.append((text, pair, str(label).strip()))
    return out, skipped, (tc, lc, pc)


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        for s in SUFFIXES:
            if (folder / f"{n}{s}").is_file():
                return folder / f"{n}{s}"
    return None


def _class_order(labels: set[str]) -> list[str]:
    try:
        return [str(v) for v in sorted(labels, key=lambda s: int(s))]
    except ValueError:
        return sorted(labels)


#: the npm package ``sentiment`` (MIT) ships, as the fixtures of its accuracy benchmark, the UCI "Sentiment
#: Labelled Sentences" (Kotzias et al., KDD 2015, CC BY 4.0): 1,000 sentences from each of three sites, half
#: negative (0), half positive (1), in ``package/test/fixtures/{amazon,imdb,yelp}.json`` (version 5.0.2; each file
#: also has one empty entry with class null, which is skipped)
SENTIMENT_SOURCES = ("amazon", "imdb", "yelp")
SENTIMENT_PACKAGE = "sentiment@5.0.2"


def _sentiment_files(path: Path) -> dict[str, bytes] | None:
    """The three fixture files of the npm package ``sentiment``: from its tarball (``npm pack sentiment``), its
    extracted ``package/`` folder, or an installed ``node_modules/sentiment``; None if ``path`` is none of those."""
    import tarfile

    if path.is_file() and path.name.endswith((".tgz", ".tar.gz")):
        try:
            with tarfile.open(path, "r:gz") as tar:
                out = {}
                for name in SENTIMENT_SOURCES:
                    try:
                        member = tar.getmember(f"package/test/fixtures/{name}.json")
                    except KeyError:
                        return None
                    f = tar.extractfile(member)
                    if f is None:
                        return None
                    out[name] = f.read()
                return out
        except (tarfile.TarError, OSError) as err:
            raise UserError(f"{path} is not a readable .tgz ({err})") from None
    if path.is_dir():
        for base in (path, path / "package", path / "node_modules" / "sentiment"):
            files = [base / "test" / "fixtures" / f"{n}.json" for n in SENTIMENT_SOURCES]
            if all(f.is_file() for f in files):
                return {n: f.read_bytes() for n, f in zip(SENTIMENT_SOURCES, files, strict=True)}
    return None


def read_sentiment_sentences(files: dict[str, bytes], seed: int = 0, fraction: float = 0.1) -> LabelledText:
    """The 3,000 labelled sentences of the npm package ``sentiment`` as train / val / test: each site's
    sentences (empty ones and repeats of a sentence skipped) shuffled with ``numpy.random.default_rng(seed)``
    and cut ``1 - 2·fraction`` / ``fraction`` / ``fraction``, so that every split holds the three sites alike."""
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    skipped: dict[str, Counter] = {"train": Counter(), "val": Counter(), "test": Counter()}
    for k, name in enumerate(SENTIMENT_SOURCES):
        try:
            rows = json.loads(files[name].decode("utf-8", errors="replace"))
        except json.JSONDecodeError as err:
            raise UserError(f"the {name}.json of the sentiment package is not JSON ({err})") from None
        seen, kept = set(), []
        for r in rows:
            text = r.get("text") if isinstance(r, dict) else None
            label = r.get("class") if isinstance(r, dict) else None
            if label not in (0, 1) or not isinstance(text, str) or not text.strip():
                skipped["train"][f"without a text or a 0/1 class ({name})"] += 1
                continue
            text = text.strip()
            if text in seen:
                skipped["train"][f"repeating a sentence ({name})"] += 1
                continue
            seen.add(text)
            kept.append((text, None, int(label)))
        order = np.random.default_rng([seed, k]).permutation(len(kept))
        n_eval = int(round(len(kept) * fraction))
        splits["test"] += [kept[i] for i in order[:n_eval]]
        splits["val"] += [kept[i] for i in order[n_eval : 2 * n_eval]]
        splits["train"] += [kept[i] for i in order[2 * n_eval :]]
    sources = {s: f"{SENTIMENT_PACKAGE} test/fixtures ({s}, seed {seed})" for s in splits}
    return LabelledText(["0", "1"], splits, skipped, sources, "text", "class", None)


def open_labelled_text(
    data: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    text_pair_column: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> LabelledText:
    """The ``train`` / ``val`` (and ``test`` where there is one) splits of ``data``; see the module docstring."""
    data = Path(data)
    if not data.exists():
        raise UserError(f"--data {data} does not exist: expected a labelled text file or a folder with train.*")
    package = _sentiment_files(data)
    if package is not None:
        return read_sentiment_sentences(package, seed, val_fraction)
    files: dict[str, Path] = {}
    if data.is_dir():
        train = _find(data, ("train",))
        if train is None:
            raise UserError(f"{data} holds no train.tsv, train.csv, train.jsonl or train.json")
        files["train"] = train
        dev = _find(data, DEV_NAMES)
        if dev is not None:
            files["val"] = dev
        test = _find(data, ("test",))
        if test is not None:
            files["test"] = test
    else:
        files["train"] = data
    raw, skipped, sources = {}, {}, {}
    cols = (text_column, label_column, text_pair_column)
    for split, path in files.items():
        raw[split], skipped[split], cols = read_labelled_file(path, *cols)
        sources[split] = str(path)
    if not raw["train"]:
        raise UserError(f"{files['train']} has no usable row")
    if "val" not in raw:
        if not 0 < val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(raw["train"]))
        n_val = max(1, int(round(len(order) * val_fraction)))
        if n_val >= len(order):
            raise UserError(f"{files['train']} has {len(order)} usable row(s): too few to split off a development set")
        rows = raw["train"]
        raw["train"] = [rows[i] for i in order[:-n_val]]
        raw["val"] = [rows[i] for i in order[-n_val:]]
        sources["val"] = f"{files['train']} (seeded {val_fraction:.0%} split, seed {seed})"
        skipped["val"] = Counter()
    labels = _class_order({lab for _, _, lab in raw["train"]})
    index = {lab: i for i, lab in enumerate(labels)}
    splits: dict[str, list[Example]] = {}
    for split, rows in raw.items():
        kept = []
        for a, b, lab in rows:
            if lab not in index:
                skipped[split]["with a label the training split does not have"] += 1
                continue
            kept.append((a, b, index[lab]))
        splits[split] = kept
    if not splits["val"]:
        raise UserError(f"{sources['val']} has no usable row")
    return LabelledText(labels, splits, skipped, sources, cols[0], cols[1], cols[2])


class TextPairDataset(Dataset):
    """``(text_a, text_b, label)`` examples as token ids, tokenized when read.

    Item ``i``: ``(ids, token_type_ids, label, group)``: two 1-D LongTensors of equal length ≤ ``max_len``,
    the label (``int`` class id, or ``float`` score for regression) and ``groups[i]`` (0 where none is given:
    MNLI tells its matched and mismatched examples apart by it).
    """

    def __init__(self, examples: Sequence[Example], tokenizer: Any, max_len: int, groups: Sequence[int] | None = None):
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.groups = list(groups) if groups is not None else None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        a, b, label = self.examples[i]
        ids, tt = self.tokenizer.encode_pair(a, b, max_len=self.max_len)
        ids, tt = list(ids)[: self.max_len], list(tt)[: self.max_len]
        group = self.groups[i] if self.groups is not None else 0
        return torch.tensor(ids, dtype=torch.long), torch.tensor(tt, dtype=torch.long), label, group


class PadCollate:
    """Pads a batch of :class:`TextPairDataset` items to its longest sequence. Returns a dict of
    ``input_ids`` (B, L) padded with ``pad_id``, ``attention_mask`` (B, L) 1 on tokens, ``token_type_ids``
    (B, L) 0 on padding, ``labels`` (B,) long (float for regression) and ``groups`` (B,) long."""

    def __init__(self, pad_id: int, regression: bool = False):
        self.pad_id, self.regression = int(pad_id), bool(regression)

    def __call__(self, items):
        n = len(items)
        length = max(1, max(int(it[0].numel()) for it in items))
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        tt = torch.zeros((n, length), dtype=torch.long)
        for k, (x, t, _, _) in enumerate(items):
            m = int(x.numel())
            ids[k, :m], tt[k, :m], mask[k, :m] = x, t, 1
        labels = torch.tensor([it[2] for it in items], dtype=torch.float32 if self.regression else torch.long)
        groups = torch.tensor([int(it[3]) for it in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "labels": labels, "groups": groups}
