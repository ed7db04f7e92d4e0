"""The Long Range Arena ListOps generator: rules, written form, determinism, files and the command."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sofa.cli import main
from sofa.data.lra import listops
from sofa.data.lra.listops import (
    draw_expression,
    evaluate,
    generate_listops,
    naive_to_string,
    naive_tree,
    naive_value,
    write_listops,
)
from sofa.data.lra.readers import open_lra_dataset
from sofa.data.lra.vocab import LISTOPS_IGNORED, LISTOPS_VOCAB, decode_listops
from sofa.errors import UserError

SMALL = dict(max_depth=6, max_args=5, min_length=20, max_length=120)


def _length(source: str) -> int:
    """LRA's length of a written expression: its tokens other than parentheses."""
    return sum(tok not in LISTOPS_IGNORED for tok in source.split())


@pytest.mark.parametrize(
    "source, value",
    [
        ("[MED 1 2 3 4 ]", 2),  # even count: the mean of 2 and 3, truncated
        ("[MED 7 1 4 ]", 4),
        ("[SM 9 9 ]", 8),
        ("[MIN 5 3 8 ]", 3),
        ("[MAX 2 [MIN 3 4 ] 1 ]", 3),
        ("[SM [MAX 2 9 ] [MED 5 1 7 ] 3 ]", 7),  # (9 + 5 + 3) mod 10
        ("[MIN [MAX [SM 4 4 ] 1 ] [MED [MAX 0 9 ] 9 ] ]", 8),
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),  # the written form, parentheses and all
        ("7", 7),
    ],
)
def test_evaluate_hand_worked_expressions(source, value):
    assert evaluate(source) == value


@pytest.mark.parametrize("source", ["", "[MAX 2 3", "[MAX ]", "[MAX 2 3 ] ]", "[MAX 2 3 ] 4", "[FOO 1 2 ]", "12"])
def test_evaluate_refuses_malformed_expressions(source):
    with pytest.raises(ValueError):
        evaluate(source)


def test_written_form_is_lras_nested_pairs():
    tree = ((("[MAX", 2), 9), "]")  # [MAX 2 9 ] as the original builds it
    assert naive_to_string(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert naive_value(tree) == 9
    inner = ((("[SM", 9), 9), "]")
    outer = (((("[MIN", 5), inner), 3), "]")
    assert naive_to_string(outer) == "( ( ( ( [MIN 5 ) ( ( ( [SM 9 ) 9 ) ] ) ) 3 ) ] )"
    assert naive_value(outer) == evaluate(naive_to_string(outer)) == 3


def test_fast_draw_matches_the_recursive_reference():
    """Same seed, no length cap: the stack-based draw makes the same draws and writes the same tree."""
    operators = 0
    for seed in range(300):
        a, b = random.Random(seed), random.Random(seed)
        tree, length = naive_tree(a, 1, 7, 6)
        source, value, fast_length = draw_expression(b, 7, 6)
        assert source == naive_to_string(tree)
        assert value == naive_value(tree) == evaluate(source)
        assert fast_length == length == _length(source)
        assert a.random() == b.random()  # the same number of draws
        operators += isinstance(tree, tuple)
    assert 40 < operators < 110  # the root is an operator with probability 1/4


def test_draw_abandons_a_tree_once_it_is_too_long():
    abandoned = 0
    for seed in range(100):
        whole = draw_expression(random.Random(seed), 8, 8)
        for max_length in range(4, 80, 3):
            capped = draw_expression(random.Random(seed), 8, 8, max_length=max_length)
            assert (capped is None) == (whole[2] >= max_length), (seed, max_length)
            if capped is not None:
                assert capped == whole
            abandoned += capped is None and whole[2] == max_length
    assert abandoned  # trees exactly max_length long are among them


def test_samples_parse_back_keep_their_bounds_and_vocabulary():
    samples = list(generate_listops(400, seed=3, **SMALL))
    vocab = set(LISTOPS_VOCAB) | LISTOPS_IGNORED
    for source, value, length in samples:
        assert evaluate(source) == value
        assert SMALL["min_length"] < length == _length(source) < SMALL["max_length"]
        assert set(source.split()) <= vocab
        assert source.count("(") == source.count(")")
    assert len({s for s, _, _ in samples}) == len(samples)


def test_label_shares_match_the_reference_and_cover_all_labels():
    """The early abandon keeps the distribution: label shares and lengths agree with full-tree rejection."""
    fast = list(generate_listops(3000, seed=0, **SMALL))
    rng = random.Random(1)
    reference = []
    while len(reference) < 3000:
        tree, length = naive_tree(rng, 1, SMALL["max_depth"], SMALL["max_args"])
        if SMALL["min_length"] < length < SMALL["max_length"]:
            reference.append((naive_value(tree), length))
    fast_labels = Counter(v for _, v, _ in fast)
    ref_labels = Counter(v for v, _ in reference)
    assert set(fast_labels) == set(ref_labels) == set(range(10))
    for label in range(10):
        assert abs(fast_labels[label] - ref_labels[label]) / 3000 < 0.03, (label, fast_labels, ref_labels)
    fast_mean = sum(n for _, _, n in fast) / 3000
    ref_mean = sum(n for _, n in reference) / 3000
    assert abs(fast_mean - ref_mean) / ref_mean < 0.05


def test_default_rules_give_all_labels_with_min_and_max_heaviest():
    labels = Counter(v for _, v, _ in generate_listops(1500, seed=0))
    assert set(labels) == set(range(10))
    middle = [labels[k] for k in range(1, 9)]
    assert labels[0] > max(middle) and labels[9] > max(middle)  # nested MIN / MAX pull values to the ends


def test_duplicates_are_dropped_and_an_exhausted_space_stops(monkeypatch):
    # depth 2, two arguments: only [OP a b ] (length 4), 4 x 10 x 10 = 400 distinct trees
    space = dict(max_depth=2, max_args=2, min_length=3, max_length=5)
    all_trees = list(generate_listops(400, seed=0, **space))
    assert len({s for s, _, _ in all_trees}) == 400
    monkeypatch.setattr(listops, "MAX_FRUITLESS_DRAWS", 20000)
    with pytest.raises(UserError, match="no new sample"):
        list(generate_listops(401, seed=0, **space))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_depth=1),
        dict(max_args=1),
        dict(min_length=10, max_length=11),
        dict(max_depth=3, max_args=2, min_length=500),
    ],
)
def test_impossible_parameters_are_refused(kwargs):
    with pytest.raises(UserError):
        next(generate_listops(1, **{**SMALL, **kwargs}))


def _write(tmp_path, name, seed=0, **kw):
    return write_listops(
        tmp_path / name, num_train=40, num_val=8, num_test=8, seed=seed, **{**SMALL, **kw}, show_progress=False
    )


def test_files_are_deterministic_and_seeded(tmp_path):
    _write(tmp_path, "a", seed=5)
    _write(tmp_path, "b", seed=5)
    _write(tmp_path, "c", seed=6)
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_files_have_lras_format_and_disjoint_splits(tmp_path):
    summary = _write(tmp_path, "out")
    sources = {}
    for split, count in (("train", 40), ("val", 8), ("test", 8)):
        raw = (tmp_path / "out" / f"basic_{split}.tsv").read_bytes()
        lines = raw.split(b"\r\n")
        assert lines[0] == b"Source\tTarget" and lines[-1] == b""
        rows = [line.decode().split("\t") for line in lines[1:-1]]
        assert len(rows) == count == summary[split]["samples"]
        for source, target in rows:
            assert evaluate(source) == int(target)
            assert SMALL["min_length"] < _length(source) < SMALL["max_length"]
        sources[split] = {s for s, _ in rows}
        assert sum(summary[split]["labels"].values()) == count
    assert not (
        sources["train"] & sources["val"] or sources["train"] & sources["test"] or sources["val"] & sources["test"]
    )


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        yield from []
        raise RuntimeError("disk full")

    monkeypatch.setattr(listops, "generate_listops", broken)
    with pytest.raises(RuntimeError):
        _write(tmp_path, "out")
    assert list(tmp_path.iterdir()) == []


def test_sofa_data_listops_command(tmp_path, capsys):
    out = tmp_path / "listops"
    args = [
        "data",
        "listops",
        str(out),
        "--train",
        "30",
        "--val",
        "5",
        "--test",
        "5",
        "--min-length",
        "10",
        "--max-length",
        "100",
        "--max-depth",
        "5",
        "--seed",
        "1",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "basic_train.tsv: 30 samples" in printed and "label shares:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    assert out.stat().st_mode & 0o755 == 0o755  # not the temporary folder's 0700

    data = open_lra_dataset(out, "listops", "val")
    assert len(data) == 5 and data.skipped == 0
    rows = (out / "basic_val.tsv").read_text().splitlines()[1:]
    for (ids, label), row in zip(data, rows, strict=False):
        source, target = row.split("\t")
        assert label == int(target) == evaluate(decode_listops(ids))
        assert decode_listops(ids) == " ".join(t for t in source.split() if t not in LISTOPS_IGNORED)

    before = (out / "basic_train.tsv").read_bytes()
    assert main(args[:-1] + ["2"]) == 2  # a non-empty folder is refused ...
    assert "--overwrite" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert main(args[:-1] + ["2", "--overwrite"]) == 0  # ... unless asked, and other files stay
    assert (out / "basic_train.tsv").read_bytes() != before
    assert (out / "notes.txt").read_text() == "mine"

    assert main(["data", "listops", str(tmp_path / "x"), "--min-length", "10", "--max-length", "11"]) == 2
    assert "min_length" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
