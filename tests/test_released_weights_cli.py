"""Released weights through the command line, end to end: an original-layout ``.pth`` → ``sofa convert`` →
``sofa predict`` / ``sofa eval`` / ``sofa train --checkpoint`` (fine-tuning to another number of classes) with no
extra options, and the ``.pth`` itself wherever a checkpoint is accepted; ``sofa eval``'s choice of weights and
split, and its report when the JSON cannot be written; files written with the user's umask; one-line errors.

Two sources of original-layout files: a PoolFormer checkpoint built here (a sofa model's state dict written in
the released PoolFormer layout, the inverse of ``poolformer.checkpoint_filter_fn``), so that the flow is tested
without ``../shared``; and the reference SOFT checkpoint of ``shared/reference`` (skipped where absent).
Images: 48-pixel crops of scikit-learn's ``china.jpg``, two classes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import sofa
from sofa.checkpoint import save_weights
from sofa.cli import main

TRAIN = ["--epochs", "1", "-b", "4", "--img-size", "32", "--workers", "0", "--threads", "1", "--progress", "log"]
EVAL = ["--workers", "0", "--progress", "none"]


def sofa_cli(*argv) -> int:
    return main([str(a) for a in argv])


def write_crops(root: Path, splits: dict[str, int]) -> Path:
    """``root/<split>/<class>/<i>.png``: 48-pixel crops of china.jpg, class ``sky`` from the top rows, class
    ``hill`` from further down; ``splits`` gives the images per class of each split."""
    from sklearn.datasets import load_sample_image

    img = load_sample_image("china.jpg")  # 427 × 640 × 3
    for split, n in splits.items():
        for cls, y0 in (("sky", 0), ("hill", 250)):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                y, x = y0 + 20 * i, 60 * i + (0 if split == "train" else 300)
                Image.fromarray(img[y : y + 48, x : x + 48]).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("china")
    return {
        "full": write_crops(base / "full", {"train": 2, "val": 2}),
        "val_only": write_crops(base / "val_only", {"val": 2}),
        "test_only": write_crops(base / "test_only", {"test": 2}),
    }


def released_poolformer_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sofa's PoolFormer keys → the released PoolFormer code's (``patch_embed.proj``, ``network.{2i}.{j}`` for
    stage i with ``layer_scale_{1,2}``, ``network.{2i-1}.proj`` for the downsampling before stage i)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"stages\.(\d+)\.(blocks|downsample\.conv)\.(.*)", k)
        if k.startswith("stem.conv."):
            k = "patch_embed.proj." + k[len("stem.conv.") :]
        elif m and m.group(2) == "blocks":
            rest = m.group(3).replace("layer_scale1", "layer_scale_1").replace("layer_scale2", "layer_scale_2")
            k = f"network.{2 * int(m.group(1))}.{rest}"
        elif m:
            k = f"network.{2 * int(m.group(1)) - 1}.proj.{m.group(3)}"
        out[k] = v
    return out


@pytest.fixture(scope="module", params=["built_poolformer", "reference_soft"])
def original(request, tmp_path_factory) -> tuple[str, Path, int]:
    """(model name, an original-layout .pth, its number of classes)."""
    if request.param == "reference_soft":
        ref = request.getfixturevalue("reference_dir")
        return "soft_mini", ref / "soft_mini.pth", 10
    torch.manual_seed(0)
    model = sofa.create_model("poolformer_mini", num_classes=5)
    with torch.no_grad():  # non-trivial scales and norms, so that a wrong mapping shows
        for name, p in model.named_parameters():
            if "layer_scale" in name or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + 1.0)
    path = tmp_path_factory.mktemp("released") / "poolformer_mini_release.pth"
    original_state = released_poolformer_layout(model.state_dict())
    assert "network.1.proj.weight" in original_state and "network.0.0.layer_scale_1" in original_state
    torch.save(original_state, path)
    loaded = sofa.create_model("poolformer_mini", checkpoint_path=path)  # the inversion is exact
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    return "poolformer_mini", path, 5


def test_convert_then_predict_eval_and_finetune_with_no_extra_options(original, folders, tmp_path, capsys):
    name, pth, classes = original
    out = tmp_path / "converted.safetensors"
    assert sofa_cli("convert", pth, out, "--model", name) == 0
    image = next((folders["full"] / "val" / "sky").glob("*.png"))

    # predict: the model and its classes come from the converted file
    capsys.readouterr()
    assert sofa_cli("predict", "-c", out, image, "-k", 3) == 0
    text = capsys.readouterr().out
    assert len(re.findall(r"^\s+\d\. \S+\s+0\.\d{4}$", text, re.M)) == 3, text

    # eval on a folder holding only val/ (no train/ beside it)
    capsys.readouterr()
    assert sofa_cli("eval", out, "--data", folders["val_only"], *EVAL) == 0
    text = capsys.readouterr().out
    assert re.search(rf"{name} on .*val_only \(val\): top1 [\d.]+\s+top5 [\d.]+\s+loss [\d.]+\s+count 4", text), text
    assert f"warning: the model has {classes} classes and the data 2 (hill, sky)" in text, text
    record = json.loads((tmp_path / "eval_val_only.json").read_text())
    assert record["metrics"]["count"] == 4 and record["model"] == name and record["split"] == "val"

    # fine-tune on 2 classes: the model is the checkpoint's (no --model), its head re-initialised
    run = tmp_path / "ft"
    capsys.readouterr()
    assert sofa_cli("train", "--checkpoint", out, "--data", folders["full"], *TRAIN, "--output", run) == 0
    log = (run / "log.txt").read_text()
    assert f"model {name}" in log, log
    assert f"has a classifier for {classes} classes, the model has 2" in log and "re-initialised" in log, log
    tuned = load_file(run / "model.safetensors")
    source = load_file(out)
    assert tuned["head.weight"].shape[0] == 2
    first_conv = next(k for k in source if k.startswith("stem") and k.endswith("weight"))
    assert tuned[first_conv].shape == source[first_conv].shape

    # a run directory works wherever a checkpoint is accepted, create_model included (at the run's image size:
    # SOFT's position embeddings are resampled to another)
    model = sofa.create_model(name, checkpoint_path=run, img_size=32)
    best = load_file(run / "best.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_the_original_pth_works_wherever_a_checkpoint_is_accepted(original, folders, tmp_path, capsys):
    name, pth, classes = original
    image = next((folders["full"] / "val" / "hill").glob("*.png"))
    capsys.readouterr()
    # an original file does not say which model it holds: the commands say so, in one line
    assert sofa_cli("predict", "-c", pth, image) == 2
    err = capsys.readouterr().err
    assert "does not say which model it holds" in err and "pass --model" in err and len(err.splitlines()) == 1
    assert sofa_cli("eval", pth, "--data", folders["val_only"], *EVAL, "-o", tmp_path / "e.json") == 2
    assert "pass --model" in capsys.readouterr().err

    assert sofa_cli("predict", "-c", pth, "--model", name, image, "-k", 1) == 0
    assert re.search(r"^\s+1\. \d+\s+0\.\d{4}$", capsys.readouterr().out, re.M)
    assert sofa_cli("eval", pth, "--model", name, "--data", folders["val_only"], *EVAL, "-o", tmp_path / "e.json") == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["count"] == 4
    run = tmp_path / "ft"
    assert (
        sofa_cli("train", "--checkpoint", pth, "--model", name, "--data", folders["full"], *TRAIN, "--output", run) == 0
    )
    # mapped to sofa's layout (an unmapped file fits no key, and loading is exact), only the head replaced
    assert f"has a classifier for {classes} classes, the model has 2" in (run / "log.txt").read_text()


def test_files_of_older_sofa_versions_still_work(folders, tmp_path, capsys):
    """An older ``sofa convert`` wrote ``sofa="1"`` with the other keys JSON-encoded one by one; older runs wrote
    ``sofa=<JSON object>``: both read, through the library and the command line."""
    from sofa.checkpoint import read_checkpoint

    state = {k: v.contiguous() for k, v in sofa.create_model("poolformer_mini", num_classes=3).state_dict().items()}
    old_convert = tmp_path / "old_convert.safetensors"
    save_file(
        state,
        str(old_convert),
        metadata={
            "format": "pt",
            "sofa": "1",
            "model": "poolformer_mini",
            "source": "release.pth",
            "num_classes": "3",
            "depths": "[1, 1, 3, 1]",
        },
    )
    old_run = tmp_path / "old_run.safetensors"
    save_file(
        state,
        str(old_run),
        metadata={
            "format": "pt",
            "sofa": json.dumps(
                {"model": "poolformer_mini", "task": "classification", "num_classes": 3, "classes": ["a", "b", "c"]}
            ),
        },
    )
    _, meta = read_checkpoint(old_convert)
    assert meta == {"model": "poolformer_mini", "source": "release.pth", "num_classes": 3, "depths": [1, 1, 3, 1]}
    assert read_checkpoint(old_run)[1]["classes"] == ["a", "b", "c"]
    image = next((folders["full"] / "val" / "sky").glob("*.png"))
    for path, first in ((old_convert, r"1\. \d "), (old_run, r"1\. [abc] ")):
        capsys.readouterr()
        assert sofa_cli("predict", "-c", path, image, "-k", 1) == 0
        assert re.search(first, capsys.readouterr().out)


@pytest.fixture(scope="module")
def small_run(folders, tmp_path_factory) -> Path:
    """A finished 1-epoch run of timm's tiny test_vit on the crops."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert (
        sofa_cli("train", "--model", "test_vit", "--data", folders["full"], *TRAIN, "--img-size", "16", "--output", run)
        == 0
    )
    return run


def test_eval_says_which_weights_it_scored_and_lets_the_user_choose(small_run, folders, capsys):
    capsys.readouterr()
    assert sofa_cli("eval", small_run, *EVAL) == 0
    text = capsys.readouterr().out
    assert re.search(r"scored .*best\.safetensors: the best weights \(top1 [\d.]+ at epoch 1\)", text), text
    assert "--weights final for the others" in text
    assert json.loads((small_run / "eval_full.json").read_text())["weights"].startswith("best weights")
    assert (
        sofa_cli("eval", small_run, "--weights", "final", "--data", folders["test_only"], "--split", "test", *EVAL) == 0
    )
    text = capsys.readouterr().out
    assert "test_only (test): top1" in text and "the final weights (epoch 1)" in text, text
    record = json.loads((small_run / "eval_test_only_test_final.json").read_text())
    assert record["checkpoint"].endswith("model.safetensors") and record["metrics"]["count"] == 4
    assert sofa_cli("eval", small_run, "--weights", "ema", *EVAL) == 2
    assert "has no ema weights (model_ema.safetensors)" in capsys.readouterr().err


def test_eval_prints_the_metrics_when_the_json_cannot_be_written(small_run, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    capsys.readouterr()
    # an output the user asked for cannot be written: metrics printed, the failure said, exit code 1
    assert sofa_cli("eval", small_run, *EVAL, "-o", blocker / "eval.json") == 1
    out, err = capsys.readouterr()
    assert re.search(r"top1 [\d.]+\s+top5", out) and f"could not write {blocker / 'eval.json'}" in err, (out, err)
    # the default file beside the checkpoint on a full disk: metrics printed, a warning, exit code 0
    import errno

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert sofa_cli("eval", small_run, *EVAL) == 0
    out, err = capsys.readouterr()
    assert re.search(r"top1 [\d.]+\s+top5", out) and "No space left on device" in err and "-o FILE" in err
    assert "Traceback" not in err and not list(small_run.glob(".*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(small_run, folders, tmp_path, capsys):
    image = next((folders["full"] / "val" / "sky").glob("*.png"))
    for argv in (
        ("predict", "-c", small_run, "--device", "cuda", image),
        ("eval", small_run, "--device", "cuda", *EVAL),
        (
            "train",
            "--model",
            "test_vit",
            "--data",
            folders["full"],
            *TRAIN,
            "--device",
            "cuda",
            "--output",
            tmp_path / "cuda",
        ),
    ):
        capsys.readouterr()
        assert sofa_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda: no CUDA device") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "text", "truncated_safetensors", "objects"])
def test_convert_of_a_broken_file_is_one_line(kind, tmp_path, capsys):
    import argparse

    good = tmp_path / "good.pth"
    torch.save(sofa.create_model("poolformer_mini").state_dict(), good)
    path = tmp_path / f"{kind}.pth"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
            .numpy()
            .tobytes()
        )
    elif kind == "text":
        path.write_text("model weights: see the README\n")
    elif kind == "truncated_safetensors":
        path = tmp_path / "x.safetensors"
        save_weights(path, sofa.create_model("poolformer_mini").state_dict())
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save({"state_dict": torch.load(good, weights_only=True), "args": argparse.Namespace(lr=1)}, path)
    want = {
        "truncated": "truncated or corrupted",
        "empty": "the file is empty",
        "random": "neither a safetensors file nor a PyTorch checkpoint",
        "text": "neither a safetensors file nor a PyTorch checkpoint",
        "truncated_safetensors": "truncated, corrupted or not a safetensors file",
        "objects": "holds objects that are not tensors (argparse.Namespace)",
    }[kind]
    capsys.readouterr()
    assert sofa_cli("convert", path, tmp_path / "out.safetensors", "--model", "poolformer_mini") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and want in err, err
    assert "Traceback" not in err and "weights_only=False" not in err and "will likely succeed" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_converted_backbone_is_refused_by_predict_and_eval_saying_where_it_goes(folders, tmp_path, capsys):
    source = tmp_path / "features.pth"
    torch.save(sofa.create_model("poolformer_mini", features_only=True).model.state_dict(), source)
    out = tmp_path / "backbone.safetensors"
    assert sofa_cli("convert", source, out, "--model", "poolformer_mini", "--features") == 0
    image = next((folders["full"] / "val" / "sky").glob("*.png"))
    for argv in (("predict", "-c", out, image), ("eval", out, "--data", folders["val_only"], *EVAL)):
        capsys.readouterr()
        assert sofa_cli(*argv) == 2
        assert "holds a backbone without classifier" in capsys.readouterr().err
