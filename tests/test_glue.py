"""GLUE and text classification: the readers on each task's exact file layout, the metrics against
scikit-learn/scipy and by hand, and ``sofa train --task glue|text-classification`` end to end with stand-ins for
the tokenizer and the text model (``sofa.data.text`` / ``sofa.models.text`` are reached through the seams of
``sofa.train.glue``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

import sofa.train.glue as glue_train
from sofa.cli import main
from sofa.data.glue import GLUE_TASKS, read_glue_split
from sofa.data.labelled_text import PadCollate, TextPairDataset, open_labelled_text
from sofa.errors import UserError
from sofa.train import text_metrics as tm

QUIET = ["--workers", "0", "--threads", "1", "--progress", "none"]
WORDS = "the a good bad film plot quite rather \"so\" 'very' dull fine".split()


# ---------------------------------------------------------------------------------------------- fixtures
def _sentence(i: int, k: int = 0) -> str:
    rng = np.random.default_rng(1000 * k + i)
    return " ".join(rng.choice(WORDS, size=3 + i % 4))


def _rows(task: str, split: str, n: int):
    """``n`` examples ``(text_a, text_b, label as written, label as read)`` of ``task``."""
    spec = GLUE_TASKS[task]
    out = []
    for i in range(n):
        a = _sentence(i, zlib.crc32(f'{task}{split}'.encode()) % 97)
        b = _sentence(i, 1 + zlib.crc32(f'{split}{task}'.encode()) % 89) if spec.pair else None
        if spec.regression:
            score = round((i * 0.37) % 5, 3)
            out.append((a, b, f"{score:.3f}", score))
        else:
            k = i % len(spec.labels)
            out.append((a, b, spec.labels[k], k))
    return out


def _line(task: str, i: int, a: str, b: str | None, lab: str, dev: bool) -> str:
    if task == "cola":
        return f"gj04\t{lab}\t{'*' if lab == '0' else ''}\t{a}"
    if task == "sst2":
        return f"{a}\t{lab}"
    if task == "mrpc":
        return f"{lab}\t{100 + i}\t{200 + i}\t{a}\t{b}"
    if task == "stsb":
        return f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{lab}"
    if task == "qqp":
        return f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{lab}"
    if task == "mnli":
        annot = f"{lab}\t{lab}\tneutral\t{lab}\t{lab}\t" if dev else f"{lab}\t"
        parses = f"( {a} )\t( {b} )\t(ROOT {a})\t(ROOT {b})"
        return f"{i}\t{31193 + i}\t{31193 + i}n\tfiction\t{parses}\t{a}\t{b}\t{annot}{lab}"
    return f"{i}\t{a}\t{b}\t{lab}"  # qnli, rte, wnli


HEADERS = {
    "sst2": "sentence\tlabel",
    "mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    "qnli": "index\tquestion\tsentence\tlabel",
    "rte": "index\tsentence1\tsentence2\tlabel",
    "wnli": "index\tsentence1\tsentence2\tlabel",
}
MNLI_HEAD = "\t".join(
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse sentence2_parse "
    "sentence1 sentence2".split()
)
MNLI_TRAIN_HEADER = MNLI_HEAD + "\tlabel1\tgold_label"
MNLI_DEV_HEADER = MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"


def write_glue(root, tasks=tuple(GLUE_TASKS), n_train=8, n_dev=6):
    """A GLUE root as download_glue_data.py lays it out; returns ``{(task, split): expected examples}``. QQP's
    training file gets one malformed row (a question broken by a newline: two short rows)."""
    expected = {}
    for task in tasks:
        spec = GLUE_TASKS[task]
        folder = root / spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        for split, fname in spec.splits.items():
            dev = split != "train"
            rows = _rows(task, split, n_train if not dev else n_dev)
            lines = [_line(task, i, a, b, lab, dev) for i, (a, b, lab, _) in enumerate(rows)]
            if task == "mnli":
                lines.insert(0, MNLI_DEV_HEADER if dev else MNLI_TRAIN_HEADER)
            elif task in HEADERS:
                lines.insert(0, HEADERS[task])
            if task == "qqp" and split == "train":
                lines.insert(3, "77\t154\t155\tWhy is this question\nbroken in two?\t0")
            (folder / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
            expected[(task, split)] = [(a, b, y) for a, b, _, y in rows]
    return expected


class ByteTokenizer:
    """Stand-in for ``sofa.data.text``'s tokenizers: bytes + 3, 0 pad, 1 [CLS], 2 [SEP]."""

    pad_id, vocab_size = 0, 259

    def encode_pair(self, a, b=None, max_len=128):
        ids = [1] + [c + 3 for c in a.encode()] + [2]
        tt = [0] * len(ids)
        if b is not None:
            more = [c + 3 for c in b.encode()] + [2]
            ids, tt = ids + more, tt + [1] * len(more)
        return ids[:max_len], tt[:max_len]


class BagModel(nn.Module):
    """Stand-in for a text model: mean of token embeddings (masked) and a linear head."""

    def __init__(self, vocab_size, max_len, head, num_labels, pad_id):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 16)
        self.type_emb = nn.Embedding(2, 16)
        self.head = nn.Linear(16, num_labels)
        self.max_len = max_len

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        assert input_ids.shape[1] <= self.max_len
        x = self.emb(input_ids) + self.type_emb(token_type_ids)
        m = attention_mask.unsqueeze(-1).float()
        logits = self.head((x * m).sum(1) / m.sum(1).clamp_min(1))
        return SimpleNamespace(loss=None, logits=logits)


@pytest.fixture
def standins(monkeypatch):
    """The seams of sofa.train.glue replaced; returns the record of what they were called with."""
    calls = {"models": [], "tokenizers": [], "init": []}

    def tok(spec):
        calls["tokenizers"].append(spec)
        return ByteTokenizer()

    def model(name, **kw):
        calls["models"].append((name, kw))
        return BagModel(**kw)

    monkeypatch.setattr(glue_train, "load_text_tokenizer", tok)
    monkeypatch.setattr(glue_train, "create_text_model", model)
    monkeypatch.setattr(glue_train, "load_encoder", lambda m, init: calls["init"].append(init))
    return calls


# ---------------------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_each_glue_reader_reads_its_exact_layout(task, tmp_path):
    expected = write_glue(tmp_path, (task,))
    for split in GLUE_TASKS[task].splits:
        got = read_glue_split(tmp_path, task, split)
        assert got.examples == expected[(task, split)], split
        if task == "qqp" and split == "train":
            assert got.num_skipped == 2 and "instead of 6" in got.describe_skipped()
        else:
            assert got.num_skipped == 0
    # the task's own folder works as --data as well
    assert read_glue_split(tmp_path / GLUE_TASKS[task].folder, task, "train").examples == expected[(task, "train")]


def test_reader_details(tmp_path):
    write_glue(tmp_path, ("cola", "stsb", "mnli", "wnli", "rte"))
    cola = read_glue_split(tmp_path, "cola", "train")
    assert len(cola) == 8  # no header line eaten: the first row is an example
    assert any('"so"' in a for a, _, _ in cola.examples)  # bare quotes kept (QUOTE_NONE)
    stsb = read_glue_split(tmp_path, "stsb", "dev")
    assert all(isinstance(y, float) for _, _, y in stsb.examples) and stsb.examples[1][2] == pytest.approx(0.37)
    mm = read_glue_split(tmp_path, "mnli", "dev_mismatched")
    assert [y for _, _, y in mm.examples] == [0, 1, 2, 0, 1, 2]
    # WNLI's word labels are read as its digits; an unknown label or a bad score is skipped and counted
    p = tmp_path / "WNLI" / "dev.tsv"
    p.write_text(HEADERS["wnli"] + "\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n2\te\tf\t0\n")
    w = read_glue_split(tmp_path, "wnli", "dev")
    assert [y for *_, y in w.examples] == [1, 0] and w.num_skipped == 1
    p = tmp_path / "STS-B" / "dev.tsv"
    p.write_text(HEADERS["stsb"] + "\n" + "\t".join(["0"] * 9 + ["n/a"]) + "\n" + "\t".join(["1"] * 9 + ["2.5"]) + "\n")
    s = read_glue_split(tmp_path, "stsb", "dev")
    assert len(s) == 1 and s.num_skipped == 1 and "not a number" in s.describe_skipped()
    with pytest.raises(UserError, match="RTE/dev.tsv"):
        (tmp_path / "RTE" / "dev.tsv").unlink()
        read_glue_split(tmp_path, "rte", "dev")
    with pytest.raises(UserError, match="CoLA/train.tsv"):
        read_glue_split(tmp_path / "nowhere", "cola", "train")


def test_labelled_text_files_and_split(tmp_path):
    rows = [{"text": f"sentence {i}", "class": i % 2} for i in range(20)] + [{"text": "no label", "class": None}]
    (tmp_path / "one.json").write_text(json.dumps(rows))
    d = open_labelled_text(tmp_path / "one.json", seed=3)
    assert d.labels == ["0", "1"] and len(d.splits["train"]) == 18 and len(d.splits["val"]) == 2
    assert sum(d.skipped["train"].values()) == 1 and d.label_column == "class"
    again = open_labelled_text(tmp_path / "one.json", seed=3)
    assert again.splits == d.splits  # seeded
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "train.csv").write_text('review,sentiment\n"good, really",pos\nbad,neg\nfine,pos\n')
    (folder / "dev.jsonl").write_text(
        '{"review": "ok", "sentiment": "pos"}\nnot json\n{"review": "x", "sentiment": "meh"}\n'
    )
    d = open_labelled_text(folder)
    assert d.labels == ["neg", "pos"] and d.splits["train"][0] == ("good, really", None, 1)
    assert d.splits["val"] == [("ok", None, 1)] and sum(d.skipped["val"].values()) == 2
    (folder / "dev.jsonl").unlink()
    (folder / "train.tsv").write_text("a\tb\tlab\nx\ty\t1\nbroken\t0\n")
    (folder / "train.csv").unlink()
    with pytest.raises(UserError, match="no text column"):
        open_labelled_text(folder)


def _sentiment_tgz(path, n=10):
    """A tarball in the layout of the npm package ``sentiment`` (``npm pack``), ``n`` sentences a site."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for site in ("amazon", "imdb", "yelp"):
            rows = [{"text": f"{site} sentence {i} ", "class": i % 2} for i in range(n)]
            rows += [{"text": f"{site} sentence 0 ", "class": 0}, {"text": "", "class": None}]  # a repeat, an empty one
            data = json.dumps(rows).encode()
            info = tarfile.TarInfo(f"package/test/fixtures/{site}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sentiment_package_reader(tmp_path):
    d = open_labelled_text(_sentiment_tgz(tmp_path / "sentiment-5.0.2.tgz"))
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 24, "val": 3, "test": 3}
    assert sum(d.skipped["train"].values()) == 6 and d.labels == ["0", "1"]
    texts = [a for v in d.splits.values() for a, _, _ in v]
    assert len(set(texts)) == 30 and all(t.startswith(("amazon", "imdb", "yelp")) for t in texts)
    assert sorted(t.split()[0] for t, _, _ in d.splits["test"]) == ["amazon", "imdb", "yelp"]  # one per site
    assert open_labelled_text(tmp_path / "sentiment-5.0.2.tgz").splits == d.splits  # seeded
    assert open_labelled_text(tmp_path / "sentiment-5.0.2.tgz", seed=1).splits != d.splits


@pytest.fixture(scope="module")
def sentiment_tarball(tmp_path_factory):
    """The npm package ``sentiment@5.0.2`` as npm ships it: ``SOFA_SENTIMENT_TGZ`` if set, else fetched here
    by ``npm pack`` from the registry (skipped, saying why, where npm or the registry is not reachable)."""
    if os.environ.get("SOFA_SENTIMENT_TGZ"):
        return os.environ["SOFA_SENTIMENT_TGZ"]
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: set SOFA_SENTIMENT_TGZ to `npm pack sentiment@5.0.2`'s tarball")
    dest = tmp_path_factory.mktemp("npm")
    try:
        subprocess.run(
            ["npm", "pack", "sentiment@5.0.2", "--pack-destination", str(dest)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"npm pack sentiment@5.0.2 failed ({type(err).__name__}); set SOFA_SENTIMENT_TGZ instead")
    return str(dest / "sentiment-5.0.2.tgz")


def test_the_real_sentiment_package(sentiment_tarball):
    d = open_labelled_text(sentiment_tarball)
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 2385, "val": 299, "test": 299}
    for split in d.splits.values():
        share = sum(y for *_, y in split) / len(split)
        assert 0.4 < share < 0.6


def test_pad_collate():
    ds = TextPairDataset([("ab", None, 1), ("c", "de", 0)], ByteTokenizer(), max_len=5, groups=[0, 1])
    b = PadCollate(0)([ds[0], ds[1]])
    assert b["input_ids"].tolist() == [[1, 100, 101, 2, 0], [1, 102, 2, 103, 104]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert b["labels"].tolist() == [1, 0] and b["groups"].tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    # 2×2 table: TP 3, FN 1, FP 2, TN 4 → MCC = (3·4 − 2·1) / sqrt(5·4·6·5) = 10 / sqrt(600)
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert tm.matthews_corrcoef(p, y) == pytest.approx(10 / math.sqrt(600))
    assert tm.f1_binary(p, y) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert tm.accuracy(p, y) == pytest.approx(0.7)
    assert tm.matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # one predicted class: undefined → 0
    assert tm.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert tm.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert tm.rankdata([10, 20, 10, 30]).tolist() == [1.5, 3.0, 1.5, 4.0]


def test_metrics_match_sklearn_and_scipy():
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, k = int(rng.integers(5, 60)), int(rng.integers(2, 4))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        assert tm.matthews_corrcoef(p, y) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)
        assert tm.accuracy(p, y) == pytest.approx(sk.accuracy_score(y, p))
        assert tm.macro_f1(p, y) == pytest.approx(sk.f1_score(y, p, average="macro", labels=np.union1d(y, p)))
        yb, pb = y % 2, p % 2
        assert tm.f1_binary(pb, yb) == pytest.approx(sk.f1_score(yb, pb, zero_division=0))
        a = rng.normal(size=n)
        b = a * rng.normal() + rng.normal(size=n)
        b[: n // 3] = np.round(b[: n // 3])  # ties
        a = np.round(a, 1)
        assert tm.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-10)
        assert tm.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-10)


# ---------------------------------------------------------------------------------------------- the tasks
def _train(*argv):
    return main(["train", *map(str, argv), "--epochs", "1", "-b", "4", *QUIET])


@pytest.mark.parametrize("task", ["cola", "stsb", "mnli", "qqp"])
def test_glue_task_end_to_end(task, tmp_path, standins, capsys):
    write_glue(tmp_path / "glue", (task,))
    run = tmp_path / "run"
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "config.yaml").write_text("model: text_tiny_soft\nmax_len: 64\ntokenizer: bytes\n")
    code = _train("--task", "glue", "--glue-task", task, "--data", tmp_path / "glue", "--init", pre, "--output", run)
    assert code == 0, capsys.readouterr().err
    r = json.loads((run / "results.json").read_text())
    spec = GLUE_TASKS[task]
    assert r["glue_task"] == task and r["metric_names"] == list(spec.metrics)
    assert set(spec.metrics) <= set(r["metrics"]) and r["metrics"]["count"] == (12 if task == "mnli" else 6)
    assert r["score"] == pytest.approx(sum(r["metrics"][m] for m in spec.metrics) / len(spec.metrics))
    assert r["best"]["metric"] == spec.metrics[0] and r["steps"] == 2
    assert r["skipped_rows"]["train"] == (2 if task == "qqp" else 0)
    name, kw = standins["models"][0]
    assert name == "text_tiny_soft"  # the pretraining run's model
    assert kw["head"] == ("regression" if task == "stsb" else "classification") and kw["num_labels"] == spec.num_labels
    assert kw["max_len"] == 64 and kw["vocab_size"] == 259 and kw["pad_id"] == 0
    assert standins["init"] == [str(pre)] and standins["tokenizers"] == ["bytes"]
    # sofa eval rebuilds it from the run (the saved tokenizer) and scores the development set again
    assert main(["eval", str(run), "--workers", "0", "--progress", "none", "-o", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert ev["count"] == r["metrics"]["count"]


def test_glue_all_writes_the_table(tmp_path, standins, capsys):
    tasks = ("cola", "sst2", "mrpc", "stsb", "mnli", "rte", "wnli")  # QQP and QNLI absent: "not run"
    write_glue(tmp_path / "glue", tasks, n_train=4, n_dev=4)
    run = tmp_path / "suite"
    assert _train("--task", "glue", "--glue-task", "all", "--data", tmp_path / "glue", "--output", run) == 0
    record = json.loads((run / "glue_results.json").read_text())
    table = (run / "glue_results.md").read_text()
    for t in tasks:
        assert (run / t / "results.json").is_file()
        assert record["tasks"][t]["score"] == json.loads((run / t / "results.json").read_text())["score"]
    assert record["tasks"]["qqp"] is None and "| qqp | f1/acc | not run" in table
    scored = [record["tasks"][t]["score"] for t in tasks if t != "wnli"]
    assert record["average"] == pytest.approx(sum(scored) / len(scored))
    assert "missing: qqp, qnli" in table
    n_models = len(standins["models"])
    # run again: every finished task is kept, nothing retrained
    assert _train("--task", "glue", "--glue-task", "all", "--data", tmp_path / "glue", "--output", run) == 0
    assert len(standins["models"]) == n_models
    assert "exists, not run again" in capsys.readouterr().out


def test_text_classification_on_a_json_list(tmp_path, standins, capsys):
    pos = ["a good film", "great plot", "fine and good", "really great", "good good"]
    neg = ["a bad film", "dull plot", "bad and dull", "really bad", "dull dull"]
    rows = [{"text": t, "class": 1} for t in pos * 3] + [{"text": t, "class": 0} for t in neg * 3]
    rows.append({"text": "no label here", "class": None})
    (tmp_path / "s.json").write_text(json.dumps(rows))
    run = tmp_path / "run"
    code = _train(
        "--task", "text-classification", "--data", tmp_path / "s.json", "--model", "text_tiny_pool", "-o", run
    )
    assert code == 0, capsys.readouterr().err
    r = json.loads((run / "results.json").read_text())
    assert r["labels"] == ["0", "1"] and r["train_examples"] + r["dev_examples"] == 30
    assert r["skipped_rows"]["train"] == 1 and {"acc", "macro_f1"} <= set(r["metrics"])
    assert standins["models"][0][1]["num_labels"] == 2 and standins["tokenizers"] == ["bytes"]
    # the sentiment package's tarball as it is: train / val / test, the test split scored at the end
    tgz = _sentiment_tgz(tmp_path / "sentiment-5.0.2.tgz")
    run = tmp_path / "run2"
    assert _train("--task", "text-classification", "--data", tgz, "--model", "text_tiny_soft", "-o", run) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["test_examples"] == 3 and r["test_metrics"]["count"] == 3 and r["train_examples"] == 24
    assert main(["eval", str(run), "--workers", "0", "--progress", "none", "-o", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["count"] == 3  # the development split


def test_user_errors(tmp_path, standins, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_glue(tmp_path / "glue", ("rte",))
    assert _train("--task", "glue", "--data", tmp_path / "glue", "-o", tmp_path / "a") == 2
    assert "--glue-task" in capsys.readouterr().err
    assert _train("--task", "glue", "--glue-task", "cola", "--data", tmp_path / "glue", "-o", tmp_path / "b") == 2
    assert "CoLA/train.tsv" in capsys.readouterr().err
    code = _train("--task", "glue", "--glue-task", "rte", "--data", tmp_path / "glue", "--model", "soft_tiny")
    assert code == 2 and "text model" in capsys.readouterr().err
    assert _train("--task", "glue", "--glue-task", "xnli", "--data", tmp_path / "glue") == 2
    assert "unknown GLUE task 'xnli'" in capsys.readouterr().err
    assert _train("--task", "glue", "--glue-task", "rte", "--data", tmp_path / "glue", "--init", tmp_path / "no") == 2
    assert "--init" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "a").exists()  # refused before any run directory


def test_find_run_tokenizer(tmp_path):
    assert glue_train.find_run_tokenizer(tmp_path) is None
    (tmp_path / "config.yaml").write_text("tokenizer: tok/vocab.json\n")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    assert glue_train.find_run_tokenizer(tmp_path / "best.safetensors") == str(tmp_path / "tok" / "vocab.json")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert glue_train.find_run_tokenizer(tmp_path) == str(tmp_path / "tokenizer.json")


def test_mnli_metrics_keep_matched_and_mismatched_apart():
    task = glue_train.GlueTask(SimpleNamespace(glue_task="mnli"), log=lambda m: None)
    preds, labels = [0, 1, 2, 0, 1, 2, 2], [0, 1, 0, 0, 2, 2, 2]
    groups = [0, 0, 0, 1, 1, 1, 1]
    m = task.compute_metrics(preds, labels, groups)
    assert m["acc_m"] == pytest.approx(100 * 2 / 3) and m["acc_mm"] == pytest.approx(100 * 3 / 4)
    cola = glue_train.GlueTask(SimpleNamespace(glue_task="CoLA"), log=lambda m: None)
    assert cola.primary_metric == "mcc" and cola.compute_metrics([1, 0], [1, 0], [0, 0]) == {"mcc": 100.0}


def test_fine_tuning_learns_a_separable_task(tmp_path, standins, capsys):
    """Inputs, labels and the loss line up: the stand-in learns SST-2-like data whose label is a word's presence."""
    folder = tmp_path / "SST-2"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def lines(n):
        out = ["sentence\tlabel"]
        for _ in range(n):
            y = int(rng.integers(2))
            filler = " ".join(rng.choice(["the", "film", "plot", "was", "quite"], size=2))
            out.append(f"{filler} {'great' if y else 'awful'}\t{y}")
        return "\n".join(out) + "\n"

    (folder / "train.tsv").write_text(lines(64))
    (folder / "dev.tsv").write_text(lines(32))
    run = tmp_path / "run"
    argv = ["--task", "glue", "--glue-task", "sst2", "--data", tmp_path, "--lr", "0.1", "-o", run]
    assert main(["train", *map(str, argv), "--epochs", "4", "-b", "8", *QUIET]) == 0, capsys.readouterr().err
    assert json.loads((run / "results.json").read_text())["metrics"]["acc"] >= 90.0
