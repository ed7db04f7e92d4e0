"""ListOps: the Long Range Arena generator of nested list-operation expressions, seeded and deterministic.

The language: an expression is a digit 0-9 or an operator applied to 2..``max_args`` expressions,
``[OP a1 a2 ... ]``, with the operators

* ``[MIN`` / ``[MAX``: the smallest / largest argument;
* ``[MED``: the median, truncated to an integer (the mean of the two middle arguments, rounded down, when the
  count is even): ``[MED 1 2 3 4 ]`` is 2;
* ``[SM``: the sum modulo 10: ``[SM 9 9 ]`` is 8.

A random tree is drawn top-down from the root at depth 1: a node below ``max_depth`` is an operator with
probability 1/4 and a digit otherwise (a node at ``max_depth`` is always a digit); an operator draws its number
of arguments uniformly from 2..``max_args``, then its arguments (depth + 1, left to right), then which of the
four operators it is, uniformly. Digits are uniform. The *length* of a tree is its number of operator, ``]`` and
digit tokens (the parentheses below are not counted); a tree is kept when ``min_length < length < max_length``
and it is not a repeat of one already kept.

The written form is LRA's: each operator's argument list is written as left-nested pairs, one ``(`` ``)`` pair
per argument plus one for the closing ``]``, tokens separated by single spaces, so ``[MAX 2 9 ]`` is written
``( ( ( [MAX 2 ) 9 ) ] )``. The files are LRA's: ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``,
tab-separated with a ``Source<TAB>Target`` header, rows ending in CR LF (Python's ``csv`` default, which the
original used), which LRA's, S4's and Nyströmformer's loaders read.

Differences from the original, by design: the random stream is seeded (``seed``), so the same arguments give the
same files byte for byte; samples are split in the order they are drawn (train first, then val, then test; a
repeat is skipped wherever it comes) instead of in the order of a Python ``set``; and trees that grow past
``max_length`` are abandoned as soon as they do. Abandoning early keeps the distribution of the kept trees (a
tree is abandoned exactly when its finished length would be too long) and makes generation several times
faster. All random choices are made with ``random.Random.random()`` (a digit is ``int(10 u)``, an argument
count ``2 + int((max_args - 1) u)``, an operator ``int(4 u)``).

Two implementations of the draw: :func:`naive_tree` is the plain recursive form (it builds the nested-pair
tuples the written form comes from, and never abandons a tree), :func:`draw_expression` the fast one used by the
writer (an explicit stack, the written tokens and the value computed while drawing, early abandon). With the
same ``random.Random`` state and no abandoned tree they draw the same trees; the tests check it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from sofa.data.lra.vocab import LISTOPS_END, LISTOPS_IGNORED, LISTOPS_OPERATORS
from sofa.errors import UserError

MIN, MAX, MED, SUM_MOD = LISTOPS_OPERATORS
OPERATOR_PROBABILITY = 0.25
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = ("Source", "Target")
#: draws without a new kept sample after which generation stops with an error (the length range is unreachable
#: in practice, or every tree it allows has been drawn)
MAX_FRUITLESS_DRAWS = 2_000_000

_DIGIT_TOKENS = tuple(str(d) for d in range(10))


def apply_operator(op: str, args: list[int]) -> int:
    """The value of ``[op args... ]``, with ``args`` already evaluated (digits 0-9)."""
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:
        ordered = sorted(args)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    if op == SUM_MOD:
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}; expected one of {', '.join(LISTOPS_OPERATORS)}")


def evaluate(source: str) -> int:
    """The value of a ListOps expression in written form (parentheses optional, tokens separated by spaces).

    Raises ``ValueError`` for anything that is not one well-formed expression.
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for tok in source.split():
        if tok in LISTOPS_IGNORED:
            continue
        if result is not None:
            raise ValueError(f"tokens after the end of the expression: {tok!r}")
        if tok in LISTOPS_OPERATORS:
            stack.append((tok, []))
            continue
        if tok == LISTOPS_END:
            if not stack:
                raise ValueError("']' without an open operator")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"{op} closed without arguments")
            value = apply_operator(op, args)
        elif len(tok) == 1 and tok.isdigit():
            value = int(tok)
        else:
            raise ValueError(f"unknown ListOps token {tok!r}")
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if stack:
        raise ValueError(f"{len(stack)} operator(s) not closed")
    if result is None:
        raise ValueError("empty expression")
    return result


def _check_parameters(max_depth: int, max_args: int, min_length: int, max_length: int) -> None:
    if max_depth < 2:
        raise UserError(f"max_depth must be at least 2 (a tree of depth 1 is a single digit), got {max_depth}")
    if max_args < 2:
        raise UserError(f"max_args must be at least 2, got {max_args}")
    if min_length < 0 or max_length <= min_length + 1:
        raise UserError(
            f"need 0 <= min_length and min_length + 1 < max_length (a length L is kept when "
            f"min_length < L < max_length), got {min_length} and {max_length}"
        )
    longest = 1
    for _ in range(max_depth - 1):  # a full tree: every node above max_depth an operator with max_args arguments
        longest = 2 + max_args * longest
        if longest > min_length:
            return
    raise UserError(
        f"no tree of depth <= {max_depth} with <= {max_args} arguments per operator is longer than "
        f"{longest} tokens; min_length={min_length} can never be exceeded"
    )


# --- the plain recursive reference --------------------------------------------------------------------------


def naive_tree(rng: random.Random, depth: int, max_depth: int, max_args: int):
    """Draw a tree recursively → ``(tree, length)``.

    A digit is an ``int``; an operator node with arguments a1..ak is the left-nested pairs
    ``((((op, a1), a2), ... ak), "]")``, which :func:`naive_to_string` writes and :func:`naive_value` evaluates.
    """
    if depth < max_depth and rng.random() < OPERATOR_PROBABILITY:
        count = 2 + int(rng.random() * (max_args - 1))
        args, length = [], 2
        for _ in range(count):
            sub, sub_length = naive_tree(rng, depth + 1, max_depth, max_args)
            args.append(sub)
            length += sub_length
        tree = LISTOPS_OPERATORS[int(rng.random() * 4)]
        for arg in args:
            tree = (tree, arg)
        return (tree, LISTOPS_END), length
    return int(rng.random() * 10), 1


def naive_to_string(tree) -> str:
    """The written form of a :func:`naive_tree` tree: every pair in parentheses."""
    if isinstance(tree, tuple):
        return f"( {naive_to_string(tree[0])} {naive_to_string(tree[1])} )"
    return str(tree)


def naive_value(tree) -> int:
    """Evaluate a :func:`naive_tree` tree by walking its pairs."""
    if not isinstance(tree, tuple):
        return tree
    head, end = tree
    if end != LISTOPS_END:
        raise ValueError(f"an operator node ends with {end!r}, not {LISTOPS_END!r}")
    args = []
    while isinstance(head, tuple):
        head, arg = head
        args.append(naive_value(arg))
    return apply_operator(head, args[::-1])


# --- the fast draw --------------------------------------------------------------------------------------------


def draw_expression(rng: random.Random, max_depth: int, max_args: int, max_length: int | None = None):
    """Draw one tree with an explicit stack → ``(source, value, length)``, or ``None`` once it reaches
    ``max_length`` tokens (the rest of the tree is not drawn).

    Same draws, in the same order, as :func:`naive_tree` from depth 1. ``source`` is the written form.
    """
    rand = rng.random
    ops = LISTOPS_OPERATORS
    digits = _DIGIT_TOKENS
    limit = float("inf") if max_length is None else max_length
    pieces: list[str | None] = []
    # one frame per open operator: [arguments still to draw, depth, argument values, index of its token]
    stack: list[list] = []
    length = 0
    depth = 1
    while True:
        if depth < max_depth and rand() < OPERATOR_PROBABILITY:
            count = 2 + int(rand() * (max_args - 1))
            pieces.append("( " * count + "(")  # one "(" per argument and one for "]"
            stack.append([count, depth, [], len(pieces)])
            pieces.append(None)  # the operator, drawn after its arguments
            length += 2
            if length >= limit:
                return None
            depth += 1
            continue
        value = int(rand() * 10)
        pieces.append(digits[value])
        length += 1
        if length >= limit:
            return None
        while stack:  # hand the value up, closing every operator that has all its arguments
            frame = stack[-1]
            frame[2].append(value)
            pieces.append(")")
            frame[0] -= 1
            if frame[0]:
                break
            op = ops[int(rand() * 4)]
            pieces[frame[3]] = op
            pieces.append("] )")
            value = apply_operator(op, frame[2])
            stack.pop()
        if not stack:
            return " ".join(pieces), value, length
        depth = stack[-1][1] + 1


def generate_listops(
    num_samples: int,
    *,
    seed: int = 0,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
    progress=None,
) -> Iterator[tuple[str, int, int]]:
    """Yield ``num_samples`` distinct kept expressions ``(source, value, length)`` in the order they are drawn.

    ``progress``: an optional callable taking the number of new samples (a tqdm bar's ``update``).
    """
    _check_parameters(max_depth, max_args, min_length, max_length)
    rng = random.Random(seed)
    seen: set[bytes] = set()
    fruitless = 0
    kept = 0
    while kept < num_samples:
        drawn = draw_expression(rng, max_depth, max_args, max_length)
        fruitless += 1
        if drawn is None or drawn[2] <= min_length:
            if fruitless >= MAX_FRUITLESS_DRAWS:
                raise UserError(
                    f"ListOps: no new sample in {MAX_FRUITLESS_DRAWS:,} draws after {kept:,} samples; "
                    f"the length range ({min_length}, {max_length}) with max_depth={max_depth} and "
                    f"max_args={max_args} is too narrow for {num_samples:,} distinct samples"
                )
            continue
        digest = hashlib.blake2b(drawn[0].encode("ascii"), digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        fruitless = 0
        kept += 1
        if progress is not None:
            progress(1)
        yield drawn


# --- the files ------------------------------------------------------------------------------------------------


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"{out} exists and is not empty; choose a new or empty folder, or pass --overwrite "
            f"(which replaces {', '.join(SPLIT_FILES.values())} and leaves anything else there)"
        )


def _tqdm_disable(show_progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None (the default) shows the bar only on a terminal."""
    return None if show_progress is None else not show_progress


def write_listops(
    out_dir,
    *,
    num_train: int = 96000,
    num_val: int = 2000,
    num_test: int = 2000,
    seed: int = 0,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> dict:
    """Write LRA's three ListOps files into ``out_dir``; returns a summary per split.

    The files are written into a temporary folder beside ``out_dir`` and moved into place only once all three
    are complete: a new (or empty) ``out_dir`` appears whole or not at all; with ``overwrite`` each of the three
    files is replaced in one rename and anything else in ``out_dir`` is left alone.

    Summary: ``{split: {"file", "samples", "labels": Counter, "min_length", "max_length", "mean_length"},
    "seconds": float}``.
    """
    from tqdm import tqdm

    counts = {"train": num_train, "val": num_val, "test": num_test}
    for name, count in counts.items():
        if count < 0:
            raise UserError(f"the number of {name} samples must be >= 0, got {count}")
    _check_parameters(max_depth, max_args, min_length, max_length)
    out = Path(out_dir)
    _prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _plain_mode(tmp)
        bar = tqdm(
            total=sum(counts.values()),
            desc="ListOps",
            unit=" samples",
            disable=_tqdm_disable(show_progress),
            file=sys.stderr,
            mininterval=1.0,
        )
        with bar:
            samples = generate_listops(
                sum(counts.values()),
                seed=seed,
                max_depth=max_depth,
                max_args=max_args,
                min_length=min_length,
                max_length=max_length,
                progress=bar.update,
            )
            for split, count in counts.items():
                summary[split] = _write_split(tmp / SPLIT_FILES[split], out / SPLIT_FILES[split], samples, count)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = time.perf_counter() - start
    return summary


def _plain_mode(folder: Path) -> None:
    """Give ``folder`` the mode a plain mkdir would (mkdtemp's 0700 would become the output folder's)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def _write_split(path: Path, final: Path, samples: Iterator, count: int) -> dict:
    """The next ``count`` samples into ``path`` (LRA's TSV); returns the split's summary, which names the file
    at ``final``, where it is moved."""
    labels: Counter = Counter()
    lengths: list[int] = []
    with open(path, "w", newline="", encoding="ascii") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(HEADER)
        for _ in range(count):
            source, value, length = next(samples)
            writer.writerow((source, value))
            labels[value] += 1
            lengths.append(length)
    return {
        "file": str(final),
        "samples": count,
        "labels": labels,
        "min_length": min(lengths, default=0),
        "max_length": max(lengths, default=0),
        "mean_length": sum(lengths) / len(lengths) if lengths else 0.0,
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """The three files into an existing ``out`` one rename each; else the whole folder in one rename."""
    if out.is_dir():
        for name in SPLIT_FILES.values():
            os.replace(tmp / name, out / name)
    else:
        os.rename(tmp, out)


def format_summary(summary: dict) -> list[str]:
    """Lines describing what :func:`write_listops` wrote: per split its file, sizes and label shares."""
    lines = []
    overall: Counter = Counter()
    for split in SPLIT_FILES:
        s = summary[split]
        overall.update(s["labels"])
        lines.append(
            f"{s['file']}: {s['samples']:,} samples, length {s['min_length']}-{s['max_length']} "
            f"(mean {s['mean_length']:.0f})"
        )
    n = sum(overall.values())
    if n:
        shares = "  ".join(f"{label}: {100 * overall[label] / n:.1f}%" for label in range(10))
        lines.append(f"label shares: {shares}")
    lines.append(f"generated in {summary['seconds']:.1f} s")
    return lines
