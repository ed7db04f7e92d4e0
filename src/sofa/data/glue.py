"""Readers for the GLUE benchmark's TSV files, exactly as GLUE's ``download_glue_data.py`` lays them out.

One folder per task under a GLUE root (``CoLA/``, ``SST-2/``, ``MRPC/``, ``STS-B/``, ``QQP/``, ``MNLI/``, ``QNLI/``,
``RTE/``, ``WNLI/``), tab-separated, UTF-8, read with ``csv`` and ``QUOTE_NONE`` (the files hold bare ``"``
characters that are part of the text). Columns (0-based) of the training and development files:

=======  ====================================  ========  ========  ===============  ==========================
task     file(s)                               text a    text b    label            header
=======  ====================================  ========  ========  ===============  ==========================
cola     train.tsv, dev.tsv                    3         —         1 (0/1)          none; 4 columns: source,
                                                                                    label, original label,
                                                                                    sentence
sst2     train.tsv, dev.tsv                    0         —         1 (0/1)          ``sentence label``
mrpc     train.tsv, dev.tsv                    3         4         0 (0/1)          ``Quality #1 ID #2 ID
                                                                                    #1 String #2 String``
stsb     train.tsv, dev.tsv                    7         8         9 (float 0–5)    10 columns, ``score`` last
qqp      train.tsv, dev.tsv                    3         4         5 (0/1)          ``id qid1 qid2 question1
                                                                                    question2 is_duplicate``
mnli     train.tsv, dev_matched.tsv,           8         9         last (3 words)   12 columns (train), 16
         dev_mismatched.tsv                                                         (dev: five annotator
                                                                                    labels, then gold_label)
qnli     train.tsv, dev.tsv                    1         2         3 (words)        ``index question sentence
                                                                                    label``
rte      train.tsv, dev.tsv                    1         2         3 (words)        ``index sentence1
                                                                                    sentence2 label``
wnli     train.tsv, dev.tsv                    1         2         3 (0/1)          ``index sentence1
                                                                                    sentence2 label``
=======  ====================================  ========  ========  ===============  ==========================

Labels are the words or digits of the files, in :attr:`GlueSpec.labels` order (index = class id); QNLI and RTE
write ``entailment`` / ``not_entailment``, WNLI writes ``0`` / ``1`` (1 = entailment) and its word labels are
accepted too. MNLI's classes are ``contradiction``, ``entailment``, ``neutral``.

A row that cannot be used is skipped and counted, never raised: a column count other than the header's (QQP's
training file has a few such rows, broken by stray tabs and newlines inside questions), a label outside the
task's classes, a score that is not a number. :class:`GlueSplit` keeps the counts by reason, and the training
task reports them. A missing file raises :class:`sofa.errors.UserError` naming the path it expected.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sofa.errors import UserError

__all__ = ["GlueSpec", "GlueSplit", "GLUE_TASKS", "glue_spec", "glue_task_dir", "read_glue_split", "read_tsv_rows"]


@dataclass(frozen=True)
class GlueSpec:
    """What is read from one GLUE task's files and how it is scored."""

    name: str  #: ``cola``, ``sst2``, ...
    folder: str  #: the folder under a GLUE root: ``CoLA``, ``SST-2``, ...
    text_a: int  #: column of the first text
    text_b: int | None  #: column of the second text (None: single-sentence task)
    label: int  #: column of the label (-1: the last one)
    labels: tuple[str, ...] | None  #: class labels as written in the files (index = class id); None = regression
    header: bool  #: the files start with a header line
    columns: int | None  #: columns of a header-less file (CoLA: 4)
    splits: dict[str, str]  #: split name → file name; ``dev`` is the one selected on, MNLI adds ``dev_mismatched``
    metrics: tuple[str, ...]  #: metric names :mod:`sofa.train.text_metrics` computes, the first selects the best
    label_names: tuple[str, ...] = ()  #: readable names of the classes, for reports
    aliases: dict[str, str] = field(default_factory=dict)  #: other spellings of a label → the file's label

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def pair(self) -> bool:
        return self.text_b is not None


_DEV = {"train": "train.tsv", "dev": "dev.tsv"}
_NLI2 = ("entailment", "not_entailment")

#: the nine GLUE tasks, in the order of the GLUE paper's table
GLUE_TASKS: dict[str, GlueSpec] = {
    s.name: s
    for s in (
        GlueSpec("cola", "CoLA", 3, None, 1, ("0", "1"), False, 4, _DEV, ("mcc",), ("unacceptable", "acceptable")),
        GlueSpec("sst2", "SST-2", 0, None, 1, ("0", "1"), True, None, _DEV, ("acc",), ("negative", "positive")),
        GlueSpec(
            "mrpc", "MRPC", 3, 4, 0, ("0", "1"), True, None, _DEV, ("f1", "acc"), ("not_equivalent", "equivalent")
        ),
        GlueSpec("stsb", "STS-B", 7, 8, 9, None, True, None, _DEV, ("spearman", "pearson")),
        GlueSpec("qqp", "QQP", 3, 4, 5, ("0", "1"), True, None, _DEV, ("f1", "acc"), ("not_duplicate", "duplicate")),
        GlueSpec(
            "mnli",
            "MNLI",
            8,
            9,
            -1,
            ("contradiction", "entailment", "neutral"),
            True,
            None,
            {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
            ("acc_m", "acc_mm"),
            ("contradiction", "entailment", "neutral"),
        ),
        GlueSpec("qnli", "QNLI", 1, 2, 3, _NLI2, True, None, _DEV, ("acc",), _NLI2),
        GlueSpec("rte", "RTE", 1, 2, 3, _NLI2, True, None, _DEV, ("acc",), _NLI2),
        GlueSpec(
            "wnli",
            "WNLI",
            1,
            2,
            3,
            ("0", "1"),
            True,
            None,
            _DEV,
            ("acc",),
            ("not_entailment", "entailment"),
            {"not_entailment": "0", "entailment": "1"},
        ),
    )
}


def glue_spec(name: str) -> GlueSpec:
    """The spec of a GLUE task by its short name (``cola``) or folder name (``CoLA``, ``SST-2``)."""
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise UserError(f"unknown GLUE task {name!r}; one of {', '.join(GLUE_TASKS)} (or all)")
    return GLUE_TASKS[key]


@dataclass
class GlueSplit:
    """One split of a GLUE task: ``examples`` are ``(text_a, text_b or None, label)``; ``label`` is the class id
    (``int``) or, for STS-B, the score (``float``). ``skipped`` counts unusable rows by reason."""

    spec: GlueSpec
    split: str
    path: Path
    examples: list[tuple[str, str | None, int | float]]
    skipped: Counter = field(default_factory=Counter)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def describe_skipped(self) -> str:
        """``'3 rows skipped (2 with 5 columns instead of 6, 1 ...)'``, or '' when none was."""
        if not self.skipped:
            return ""
        why = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return f"{self.path}: {self.num_skipped} row(s) skipped ({why})"

    def __len__(self) -> int:
        return len(self.examples)


def glue_task_dir(root: str | Path, spec: GlueSpec) -> Path:
    """The folder holding ``spec``'s files: ``root/<Folder>`` (a GLUE root) or ``root`` itself."""
    root = Path(root)
    for cand in (root / spec.folder, root / spec.folder.upper(), root / spec.name):
        if cand.is_dir():
            return cand
    return root


def read_tsv_rows(path: Path) -> list[list[str]]:
    """All rows of a TSV file as GLUE writes them: tab-separated, no quoting, UTF-8 (a BOM is dropped)."""
    if not path.is_file():
        raise UserError(f"expected the file {path}: it does not exist")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="", errors="replace") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_glue_split(root: str | Path, task: str | GlueSpec, split: str) -> GlueSplit:
    """Read ``split`` (``train``, ``dev``; MNLI also ``dev_mismatched``) of a GLUE task under ``root`` (a GLUE
    root or the task's own folder). Rows that cannot be used are skipped and counted (see the module docstring)."""
    spec = task if isinstance(task, GlueSpec) else glue_spec(task)
    if split not in spec.splits:
        raise UserError(f"GLUE {spec.name} has the splits {', '.join(spec.splits)}; got {split!r}")
    path = glue_task_dir(root, spec) / spec.splits[split]
    if not path.is_file():
        raise UserError(
            f"GLUE {spec.name}: expected the file {path} (the layout of GLUE's download_glue_data.py: "
            f"<glue root>/{spec.folder}/{spec.splits[split]}); it does not exist"
        )
    rows = read_tsv_rows(path)
    out = GlueSplit(spec, split, path, [])
    if spec.header:
        if not rows:
            raise UserError(f"{path} is empty: expected a header line and rows")
        width = len(rows[0])
        rows = rows[1:]
    else:
        width = int(spec.columns or 0)
    lookup = {lab: i for i, lab in enumerate(spec.labels or ())}
    lookup.update({alias: lookup[lab] for alias, lab in spec.aliases.items() if lab in lookup})
    for row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line (the end of some files) is no row
        if len(row) != width:
            out.skipped[f"with {len(row)} columns instead of {width}"] += 1
            continue
        raw = row[spec.label].strip()
        if spec.regression:
            try:
                label: int | float = float(raw)
            except ValueError:
                out.skipped["with a score that is not a number"] += 1
                continue
            if label != label:  # NaN
                out.skipped["with a score that is not a number"] += 1
                continue
        else:
            if raw not in lookup:
                out.skipped[f"with a label outside {'/'.join(spec.labels or ())}"] += 1
                continue
            label = lookup[raw]
        text_b = row[spec.text_b] if spec.text_b is not None else None
        out.examples.append((row[spec.text_a], text_b, label))
    if not out.examples:
        raise UserError(
            f"{path} has no usable row" + (f": {out.describe_skipped()}" if out.skipped else " (an empty file?)")
        )
    return out
