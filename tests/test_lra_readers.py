"""Long Range Arena readers, each on a tiny fixture in its exact on-disk layout; the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sofa.data.lra import (
    BYTE_VOCAB_SIZE,
    PAD_ID,
    UnsafePickleError,
    collate_lra,
    encode_bytes,
    encode_listops,
    load_data_pickle,
    open_lra_dataset,
    rgb_to_lra_grayscale,
)
from sofa.data.lra.listops import evaluate, write_listops
from sofa.errors import UserError

from lra_fixtures import cifar_batch


def _bytes_ids(data: bytes) -> list[int]:
    return [b + 1 for b in data]


def _open(*args, **kwargs):
    """open_lra_dataset, returning the warnings it raised as well."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = open_lra_dataset(*args, **kwargs)
    return data, [str(w.message) for w in caught]


# --- ListOps ---------------------------------------------------------------------------------------------------


def test_listops_release_layout_skips_bad_rows(tmp_path):
    folder = tmp_path / "lra_release" / "listops-1000"
    write_listops(
        folder,
        num_train=6,
        num_val=3,
        num_test=3,
        max_depth=5,
        max_args=4,
        min_length=8,
        max_length=60,
        show_progress=False,
    )
    with open(folder / "basic_train.tsv", "a", newline="") as f:
        f.write("[MAX 1 2 ]\t2\textra\r\n")  # three columns
        f.write("[MAX 1 2 ]\t12\r\n")  # not a class
        f.write("[MAX 1 [FOO 2 ] ]\t2\r\n")  # outside the vocabulary
        f.write("\r\n")  # a blank line is not a row
    data, warned = _open(tmp_path, "listops", "train")
    assert type(data).__name__ == "ListOpsTSV" and len(data) == 6 and data.skipped == 3
    assert len(warned) == 1 and "skipped 3" in warned[0] and "line 8" in warned[0]
    rows = (folder / "basic_train.tsv").read_text().splitlines()[1:7]
    for (ids, label), row in zip(data, rows, strict=False):
        source, target = row.split("\t")
        assert label == int(target)
        assert torch.equal(ids, encode_listops(source))
        assert ids.dtype == torch.long and int(ids.min()) > PAD_ID and int(ids.max()) < data.vocab_size
    assert len(open_lra_dataset(tmp_path, "listops", "dev")) == 3  # dev → basic_val.tsv
    short, _ = _open(folder, "listops", "train", max_len=5)
    assert all(len(ids) == 5 for ids, _ in short)


def test_listops_encoding_drops_parentheses_and_keeps_brackets():
    ids = encode_listops("( ( ( [MAX 2 ) 9 ) ] )")
    assert ids.tolist() == encode_listops("[MAX 2 9 ]").tolist()
    assert len(ids) == 4 and len(set(ids.tolist())) == 4
    with pytest.raises(KeyError):
        encode_listops("[MAX 2 X ]")


# --- retrieval -------------------------------------------------------------------------------------------------


def test_aan_pairs_release_layout(tmp_path):
    folder = tmp_path / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    doc_a = 'a "quoted" title, with comma'.encode()  # no quoting: quotes are plain bytes
    doc_b = "Zürich résumé".encode("utf-8")
    rows = [
        b"1\tid1\tid2\t" + doc_a + b"\t" + doc_b,
        b"0.0\tid3\tid4\tshort\t" + doc_a,
        b"1\tid5\tid6\tonly four columns",
        b"7\tid7\tid8\tx\ty",
        b"0\tid9\tid10\t\ty",
    ]
    (folder / "new_aan_pairs.eval.tsv").write_bytes(b"\n".join(rows) + b"\n")
    data, warned = _open(tmp_path, "retrieval", "val")
    assert len(data) == 2 and data.skipped == 3 and len(warned) == 1
    (first, second), label = data[0]
    assert label == 1 and first.tolist() == _bytes_ids(doc_a) and second.tolist() == _bytes_ids(doc_b)
    assert data[1][1] == 0 and data.vocab_size == BYTE_VOCAB_SIZE == 257
    (ids_a, ids_b), labels = collate_lra([data[0], data[1]])
    assert ids_a.shape == (2, len(doc_a)) and ids_b.shape == (2, max(len(doc_a), len(doc_b)))
    assert (ids_a[1, 5:] == PAD_ID).all() and labels.tolist() == [1, 0]
    cut, _ = _open(folder, "retrieval", "eval", max_len=4)
    assert [len(x) for x in cut[0][0]] == [4, 4]
    with pytest.raises(UserError, match="new_aan_pairs.train.tsv"):
        open_lra_dataset(tmp_path, "retrieval", "train")


# --- text: IMDB ------------------------------------------------------------------------------------------------


def test_imdb_tree(tmp_path):
    reviews = {
        ("train", "pos"): ["Great film!", "Loved it <br /> really"],
        ("train", "neg"): ["Dull."],
        ("test", "pos"): ["Fine"],
        ("test", "neg"): ["Bad", ""],
    }
    for (split, polarity), texts in reviews.items():
        folder = tmp_path / "aclImdb" / split / polarity
        folder.mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / f"{i}_7.txt").write_text(text, encoding="utf-8")
    train = open_lra_dataset(tmp_path, "text", "train")
    got = sorted((bytes(b - 1 for b in ids.tolist()).decode(), label) for ids, label in train)
    assert got == [("Dull.", 0), ("Great film!", 1), ("Loved it <br /> really", 1)]
    val, warned = _open(tmp_path / "aclImdb", "text", "val")  # IMDB has no validation split: LRA uses test
    assert len(val) == 2 and val.skipped == 1 and "empty review" in warned[0]
    assert len(open_lra_dataset(tmp_path, "text", "train", max_len=3)[1][0]) == 3


# --- image: CIFAR-10 -------------------------------------------------------------------------------------------


def test_grayscale_is_lras():
    pure = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.uint8)
    # 255.5 x (0.2989, 0.5870, 0.1140) = 76.37, 149.98, 29.13; white 255.47; truncated
    assert rgb_to_lra_grayscale(pure).tolist() == [0, 76, 149, 29, 255]
    colours = np.random.default_rng(0).integers(0, 256, (20000, 3), dtype=np.uint8)
    level = (colours.astype(np.float64) / 255 @ np.array([0.2989, 0.5870, 0.1140])) * 255.5
    clear = np.abs(level - np.rint(level)) > 1e-3  # away from a truncation boundary, float32 cannot flip them
    assert (rgb_to_lra_grayscale(colours)[clear] == np.floor(level[clear])).all()
    itu = (colours.astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114])) * 255.5
    assert (np.floor(itu[clear]) != np.floor(level[clear])).sum() > 10  # the check tells the weights apart


def test_cifar10_batches(tmp_path):
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("flower.jpg")
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    crops = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        ys, xs = rng.integers(0, 300, 4), rng.integers(0, 500, 4)
        crops[name] = np.stack([photo[y : y + 32, x : x + 32] for y, x in zip(ys, xs, strict=False)])
        cifar_batch(root / name, crops[name], [int(v) for v in rng.integers(0, 10, 4)])
    train = open_lra_dataset(tmp_path, "image", "train")
    val = open_lra_dataset(tmp_path, "image", "val")
    test = open_lra_dataset(root, "image", "test")
    assert (len(train), len(val), len(test)) == (18, 2, 4)  # the first 90% of the 20 training images, then 10%
    ids, label = test[1]
    assert ids.shape == (1024,) and ids.dtype == torch.long and train.vocab_size == 256
    assert ids.tolist() == rgb_to_lra_grayscale(crops["test_batch"][1]).reshape(-1).tolist()
    assert label == pickle.loads((root / "test_batch").read_bytes())[b"labels"][1]
    last = rgb_to_lra_grayscale(crops["data_batch_5"][3]).reshape(-1).tolist()
    assert val[1][0].tolist() == last
    with pytest.raises(UserError, match="images are read whole"):
        open_lra_dataset(tmp_path, "image", "train", max_len=100)


# --- Pathfinder ------------------------------------------------------------------------------------------------


def test_pathfinder_release_layout(tmp_path):
    base = tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    rng = np.random.default_rng(0)
    images = {}
    for meta_index in (0, 1):
        (base / "imgs" / str(meta_index)).mkdir(parents=True)
        lines = []
        for i in range(10):
            name = f"sample_{i}.png"
            path = base / "imgs" / str(meta_index) / name
            if (meta_index, i) == (1, 4):
                path.write_bytes(b"")  # the release has empty PNGs
            else:
                pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(path)
                images[f"imgs/{meta_index}/{name}"] = pixels
            lines.append(f"imgs/{meta_index} {name} {i} {i % 2} 2 14 3 1.5 \n")
        (base / "metadata").mkdir(exist_ok=True)
        (base / "metadata" / f"{meta_index}.npy").write_text("".join(lines))
    with open(base / "metadata" / "0.npy", "a") as f:
        f.write("imgs/0 sample_99.png 0 1\n")  # names a missing image
    splits = {}
    for split in ("train", "val", "test"):
        data, warned = _open(tmp_path, "pathfinder", split)
        assert data.skipped == 2 and "empty image" in warned[0] and "missing image" in warned[0]
        splits[split] = data
    assert [len(splits[s]) for s in ("train", "val", "test")] == [15, 2, 2]  # 19 usable: 80/10/10
    seen = [str(f.relative_to(base)) for s in splits.values() for f in s.files]
    assert sorted(seen) == sorted(images)
    ids, label = splits["val"][0]
    file = splits["val"].files[0]
    assert ids.tolist() == images[str(file.relative_to(base))].reshape(-1).tolist()
    assert label == int(file.stem.split("_")[1]) % 2
    easy = tmp_path / "lra_release" / "pathfinder32" / "curv_baseline"
    with pytest.raises(UserError, match="curv_baseline"):
        open_lra_dataset(tmp_path, "pathfinder", "train", difficulty="easy")
    easy.mkdir()
    assert len(_open(base, "pathfinder", "train", difficulty="easy")[0]) == 15  # the folder itself


# --- the LRA harness's pickles ---------------------------------------------------------------------------------


def test_harness_pickles(tmp_path):
    pad = np.zeros(6, dtype=np.int32)
    listops_rows = [
        {"input_ids_0": np.concatenate([np.array([3, 1, 4, 2], dtype=np.int32), pad]), "label": np.int32(7)},
        {"input_ids_0": np.array([5, 0, 6], dtype=np.int32), "label": np.int32(1)},
        {"input_ids_0": np.array([1, 2], dtype=np.int32)},  # no label
        {"input_ids_0": np.array([1, 2], dtype=np.int32), "label": np.int32(12)},
    ]
    (tmp_path / "listops.dev.pickle").write_bytes(pickle.dumps(listops_rows))
    data, warned = _open(tmp_path, "listops", "val")
    assert type(data).__name__ == "HarnessPickle" and len(data) == 2 and data.skipped == 2 and len(warned) == 1
    assert data[0][0].tolist() == [3, 1, 4, 2] and data[0][1] == 7  # trailing padding dropped
    assert data[1][0].tolist() == [5, 0, 6]  # an inner zero stays
    assert data.vocab_size == 7

    pairs = [{"input_ids_0": np.array([10, 11, 0, 0]), "input_ids_1": np.array([12, 0]), "label": np.int32(1)}]
    (tmp_path / "retrieval.train.pickle").write_bytes(pickle.dumps(pairs, protocol=5))
    (a, b), label = open_lra_dataset(tmp_path, "retrieval", "train")[0]
    assert a.tolist() == [10, 11] and b.tolist() == [12] and label == 1

    image = [{"input_ids_0": np.array([0, 0, 255, 0], dtype=np.int32), "label": np.int32(1)}]
    (tmp_path / "pathfinder32-curv_contour_length_14.test.pickle").write_bytes(pickle.dumps(image))
    ids, _ = open_lra_dataset(tmp_path, "pathfinder", "test")[0]
    assert ids.tolist() == [0, 0, 255, 0]  # pixels: 0 is black, not padding


def test_restricted_unpickler_loads_numpy_1_and_2_pickles():
    rows = [
        {
            "input_ids_0": np.arange(5, dtype=np.int32),
            "label": np.int32(3),
            "score": np.float32(0.5),
            "name": "x",
            "raw": b"\x00\xff",
            "pair": (1, 2.5),
        }
    ]
    for protocol in (2, 4, 5):
        blob = pickle.dumps(rows, protocol=protocol)
        variants = [blob]
        if protocol == 2:  # module names are plain text lines there: what numpy 1.x writes
            variants.append(blob.replace(b"numpy._core", b"numpy.core"))
        for variant in variants:
            loaded = load_data_pickle(variant)
            assert loaded[0]["input_ids_0"].tolist() == [0, 1, 2, 3, 4] and loaded[0]["label"] == 3
            assert loaded[0]["raw"] == b"\x00\xff" and loaded[0]["pair"] == (1, 2.5)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Evaluator:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps([{"input_ids_0": np.arange(3), "label": _Exploit(marker)}])
    with pytest.raises(UnsafePickleError, match="system"):
        load_data_pickle(blob)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_data_pickle(pickle.dumps(_Evaluator()))
    (tmp_path / "text.train.pickle").write_bytes(blob)
    with pytest.raises(UserError, match="refusing"):  # through the reader: a one-line error for the CLI
        open_lra_dataset(tmp_path, "text", "train")
    assert not marker.exists()
    pickle.loads(blob)  # the same bytes do run the command with the plain unpickler: the fixture is real
    assert marker.exists()


def test_restricted_unpickler_reports_a_truncated_file(tmp_path):
    blob = pickle.dumps([{"input_ids_0": np.arange(300)}])
    (tmp_path / "cut.pickle").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="cut.pickle"):
        load_data_pickle(tmp_path / "cut.pickle")


# --- the user's own tables -------------------------------------------------------------------------------------


def test_user_tables(tmp_path):
    (tmp_path / "train.csv").write_text(
        'id,Text,Label\n1,"hello, ""world""\nsecond line",1\n2,bye,0\n3,,1\n4,x,positive\n', encoding="utf-8"
    )
    data, warned = _open(tmp_path, "text", "train")
    assert type(data).__name__ == "TextTable" and len(data) == 2 and data.skipped == 2
    assert data[0][0].tolist() == _bytes_ids('hello, "world"\nsecond line'.encode()) and data[0][1] == 1
    assert "empty or missing text" in warned[0] and "'positive'" in warned[0]

    rows = [{"sentence": "ok ünïcode", "target": 1}, "not an object", {"sentence": "fine", "target": 0}]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    val, _ = _open(tmp_path, "text", "val")
    assert len(val) == 2 and val.skipped == 2 and val[0][0].tolist() == _bytes_ids("ok ünïcode".encode())

    (tmp_path / "test.tsv").write_text("text1\ttext2\tlabel\nab\tcd\t1\n", encoding="utf-8")
    (a, b), label = open_lra_dataset(tmp_path / "test.tsv", "retrieval", "test")[0]
    assert a.tolist() == _bytes_ids(b"ab") and b.tolist() == _bytes_ids(b"cd") and label == 1

    (tmp_path / "ops.tsv").write_text("Source\tTarget\n( ( [SM 9 ) 9 ) ] )\t8\n[MIN 1 Q ]\t1\n")
    ops, warned = _open(tmp_path / "ops.tsv", "listops", "train")
    assert len(ops) == 1 and ops.skipped == 1 and evaluate("[SM 9 9 ]") == ops[0][1] == 8

    (tmp_path / "bad.csv").write_text("words,score\na,1\n")
    with pytest.raises(UserError, match="text column"):
        open_lra_dataset(tmp_path / "bad.csv", "text", "train")


def test_missing_layouts_say_what_was_looked_for(tmp_path):
    with pytest.raises(UserError, match=r"listops-1000/basic_train.tsv.*listops.train.pickle"):
        open_lra_dataset(tmp_path, "listops", "train")
    with pytest.raises(UserError, match="aclImdb"):
        open_lra_dataset(tmp_path, "text", "test")
    with pytest.raises(UserError, match="unknown LRA task"):
        open_lra_dataset(tmp_path, "speech", "train")
    with pytest.raises(UserError, match="unknown split"):
        open_lra_dataset(tmp_path, "text", "holdout")
    with pytest.raises(UserError, match="does not exist"):
        open_lra_dataset(tmp_path / "nowhere", "text", "train")
    (tmp_path / "train.tsv").write_text("text\tlabel\n\tx\n")
    with pytest.raises(UserError, match="no usable text rows"):
        open_lra_dataset(tmp_path, "text", "train")


def test_collate_pads_with_zero_and_loads_in_workers(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\nabc\t1\nde\t0\nf\t1\n")
    data = open_lra_dataset(tmp_path, "text", "train")
    ids, labels = collate_lra([data[0], data[1], data[2]])
    assert ids.tolist() == [[98, 99, 100], [101, 102, 0], [103, 0, 0]] and labels.tolist() == [1, 0, 1]
    assert encode_bytes("abc").tolist() == [98, 99, 100]
