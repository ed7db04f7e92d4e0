"""sofa train / eval / predict end to end (in-process, tiny model and images), and the refusals of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from sofa.cli import main
from sofa.data.synthetic import make_image_folder

from helpers import TINY_TRAIN
from train_callbacks import NanImagesAtStep

TINY = [*TINY_TRAIN, "--log-interval", "2"]


def sofa(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = make_image_folder(tmp_path_factory.mktemp("shapes"), num_classes=3, train_per_class=8, val_per_class=4)
    (root / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    """A finished 2-epoch run on the 3-class folder (shared by the tests that need a checkpoint)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert sofa("train", "--data", folder, *TINY, "--epochs", 2, "-b", 8, "--output", out) == 0
    return out


def test_train_writes_everything_and_says_where(run, folder, capsys):
    for name in (
        "last.pt",
        "model.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "curves.png",
        "config.yaml",
        "log.txt",
    ):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind
    log = (run / "log.txt").read_text()
    assert "wrote " + str(run) in log and "best.safetensors" in log and "sofa eval" in log
    assert "1 unreadable image(s)" in log  # broken.png skipped and counted, not fatal
    # 2 epochs with the recipe's 5 of warm-up: the run says that its learning rate never reaches --lr
    assert "warning: --epochs 2 is not longer than --warmup-epochs 5: the learning rate is still warming up" in log
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("train_loss", "train_acc", "val_top1", "val_top5", "val_loss", "lr", "images_per_s"):
        assert key in epochs[-1], key
    assert epochs[-1]["val_count"] == 12
    assert any(r["type"] == "step" for r in recs)
    png = Image.open(run / "curves.png")
    assert png.format == "PNG" and png.size[0] > 800
    # the full training state loads with weights_only=True and has every part
    state = torch.load(run / "last.pt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "ema",
        "epoch",
        "step_in_epoch",
        "global_step",
        "rng",
        "config",
        "best",
    ):
        assert key in state, key
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0 and state["config"]["model"] == "test_vit"


def test_eval_prints_and_writes_json(run, capsys):
    capsys.readouterr()
    assert sofa("eval", run, "--workers", 0, "--progress", "none") == 0
    out = capsys.readouterr().out
    assert re.search(r"top1 [\d.]+\s+top5 [\d.]+\s+loss [\d.]+", out), out
    rec = json.loads((run / "eval_" + "shapes0.json" if False else next(run.glob("eval_*.json"))).read_text())
    m = rec["metrics"]
    assert m["count"] == 12 and 0 <= m["top1"] <= m["top5"] <= 100 and m["loss"] > 0
    assert rec["model"] == "test_vit"
    # an explicit output path and another dataset (the same folder given explicitly)
    target = run.parent / "e.json"
    assert sofa("eval", run / "model.safetensors", "--data", Path(rec["data"]), "-o", target, "--workers", 0) == 0
    assert json.loads(target.read_text())["metrics"]["count"] == 12


def test_predict_gives_topk_with_probabilities(run, folder, capsys):
    img = next((folder / "val" / "class_1").glob("*.png"))
    gray = run.parent / "gray.png"
    Image.open(img).convert("L").save(gray)
    capsys.readouterr()
    assert sofa("predict", img, gray, "--checkpoint", run, "-k", 2, "--json", run.parent / "p.json") == 0
    out = capsys.readouterr().out
    assert re.search(r"1\. class_\d\s+0\.\d{4}", out) and str(gray) in out
    preds = json.loads((run.parent / "p.json").read_text())
    assert len(preds) == 2 and all(len(p["top"]) == 2 for p in preds)
    probs = [t["prob"] for t in preds[0]["top"]]
    assert probs[0] >= probs[1] and sum(probs) <= 1.0 + 1e-6
    # an unreadable file is reported, the others still predicted, exit code 1
    bad = run.parent / "bad.jpg"
    bad.write_bytes(b"nope")
    assert sofa("predict", img, bad, "-c", run) == 1
    out = capsys.readouterr().out
    assert "unreadable image" in out and "1. class_" in out


def test_digits_quick_run_learns(tmp_path, capsys):
    """The default data (digits), a cheap model, 3 epochs: far above the 10% of chance."""
    out = tmp_path / "d"
    assert sofa("train", *TINY, "--epochs", 3, "--output", out) == 0
    text = capsys.readouterr().out
    assert "digits (scikit-learn, bundled): 1437 train / 360 val" in text
    assert "warming up" not in text  # 3 epochs, 1 of warm-up
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["val_top1"] > 60, last


def test_recipe_options_all_at_once(folder, tmp_path):
    """Mixup+CutMix, RandAugment, random erasing, drop path, clipping, EMA, bf16, channels-last, grad ckpt."""
    out = tmp_path / "r"
    assert (
        sofa(
            "train",
            "--data",
            folder,
            *TINY,
            "--epochs",
            2,
            "-b",
            6,
            "--output",
            out,
            "--mixup",
            0.8,
            "--cutmix",
            1.0,
            "--aa",
            "rand-m9-mstd0.5-inc1",
            "--reprob",
            0.25,
            "--drop-path",
            0.1,
            "--clip-grad",
            1.0,
            "--ema",
            "--ema-decay",
            0.9,
            "--amp",
            "bf16",
            "--channels-last",
            "--grad-checkpointing",
            "--smoothing",
            0.1,
            "--warmup-epochs",
            1,
            "--opt",
            "adamw",
            "--progress",
            "bar",
        )
        == 0
    )  # the tqdm bar (a terminal's default) too
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]
    assert "ema_val_top1" in recs[-1] and (out / "model_ema.safetensors").is_file()
    cfg = (out / "config.yaml").read_text()
    assert "amp: bf16" in cfg and "grad_checkpointing: true" in cfg and "mixup: 0.8" in cfg


def test_config_file_and_precedence(folder, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {folder}\nmodel: test_vit\nimg-size: 16\nepochs: 1\nbatch_size: 12\nlr: 0.01\nworkers: 0\nthreads: 1\n"
    )
    out = tmp_path / "o"
    assert sofa("train", "--config", cfg, "--lr", 0.02, "--output", out, "--progress", "none") == 0
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 12 and saved["lr"] == 0.02  # CLI beats the file
    assert saved["aa"] == "rand-m9-mstd0.5-inc1"  # an image folder gets the ImageNet recipe's defaults
    js = tmp_path / "c.json"
    js.write_text(
        json.dumps(
            {
                "data": str(folder),
                "model": "test_vit",
                "epochs": 1,
                "img_size": 16,
                "workers": 0,
                "threads": 1,
                "output": str(tmp_path / "j"),
            }
        )
    )
    assert sofa("train", "--config", js, "--progress", "none") == 0 and (tmp_path / "j" / "last.pt").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 3\n")
    capsys.readouterr()
    assert sofa("train", "--config", bad) == 2
    assert "unknown option(s): learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", r"does not exist"),
        (lambda p: p, r"no train/ folder"),
        (
            lambda p: (make_image_folder(p, 2, 2, 1), (p / "train" / "empty_class").mkdir(), p)[-1],
            r"hold no images .*empty_class",
        ),
    ],
    ids=["missing", "empty", "class-without-images"],
)
def test_bad_data_is_refused_clearly(tmp_path, capsys, setup, message):
    data = setup(tmp_path)
    assert sofa("train", "--data", data, *TINY, "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err) and "Traceback" not in err


def test_checkpoint_of_another_model_names_the_keys(run, folder, tmp_path, capsys):
    capsys.readouterr()
    assert (
        sofa(
            "train", "--data", folder, *TINY, "--model", "test_resnet", "--checkpoint", run, "--output", tmp_path / "x"
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not fit model 'test_resnet'" in err and "saved from model 'test_vit'" in err
    assert "missing keys (" in err and "unexpected keys (" in err and "blocks.0.attn" in err, err
    assert sofa("eval", run, "--model", "test_resnet", "--workers", 0) == 2
    assert "does not fit model" in capsys.readouterr().err


def test_finetune_with_another_number_of_classes_reinitialises_the_head(run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "ft"
    assert sofa("train", *TINY, "--checkpoint", run, "--epochs", 1, "--output", out) == 0  # digits: 10 classes
    text = capsys.readouterr().out
    assert re.search(r"classifier for 3 classes, the model has 10: head.bias, head.weight re-initialised", text)
    from safetensors.torch import load_file

    a, b = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    assert b["head.weight"].shape == (10, 64) and a["head.weight"].shape == (3, 64)


def test_nan_loss_stops_with_step_and_hint_keeping_last_good_checkpoint(folder, tmp_path, capsys):
    out = tmp_path / "nan"
    capsys.readouterr()
    argv = ["train", "--data", folder, *TINY, "--epochs", 3, "-b", 8, "--output", out]
    nan_images = NanImagesAtStep(5)  # 3 steps per epoch: epoch 2, step 2
    assert main([str(a) for a in argv], callbacks=[nan_images]) == 3
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 2 (global step 5)" in err
    assert f"{out / 'last.pt'} (after epoch 1), kept" in err and "lower --lr" in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert sofa("train", "--resume", out) == 0  # and the run can go on from there
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


def test_after_training_gets_the_finished_run_and_its_files_are_listed(folder, tmp_path, capsys, monkeypatch):
    """The task's hook after the last epoch sees the run's best result and step count, can score the weights with
    the run's evaluation loaders, and the file it writes is listed with the run's files."""
    from sofa.train.classification import ClassificationTask

    seen = {}

    def after_training(self, model, run):
        seen.update(best=run.best, steps=run.global_step)
        seen["count"] = self.evaluate(model, run.loader(self.build_eval_dataset(), "val"), run.ctx)["count"]
        (run.run_dir / "test.json").write_text("{}")
        return {"test.json": "metrics on the test split"}

    monkeypatch.setattr(ClassificationTask, "after_training", after_training)
    out = tmp_path / "after"
    capsys.readouterr()
    assert sofa("train", "--data", folder, *TINY, "--epochs", 1, "-b", 8, "--output", out) == 0
    assert seen["best"]["metric"] == "top1" and seen["best"]["epoch"] == 1 and seen["steps"] == 3
    assert seen["count"] == 12  # the 3 × 4 validation images, each once
    assert re.search(r"\n  test\.json +metrics on the test split\n", capsys.readouterr().out)


def test_other_refusals(run, folder, tmp_path, capsys):
    capsys.readouterr()
    assert sofa("train", "--data", folder, *TINY, "--output", run) == 2  # would overwrite a run
    assert "already holds a run: continue it with --resume" in capsys.readouterr().err
    assert sofa("train", "--model", "no_such_model", "--output", tmp_path / "m") == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert sofa("train", "--resume", tmp_path / "nothing") == 2
    assert "no training state" in capsys.readouterr().err
    assert sofa("train", "--epochs", 0) == 2
    assert "--epochs must be > 0" in capsys.readouterr().err
    assert sofa("train", "--amp", "fp16", "--device", "cpu", *TINY, "--output", tmp_path / "f") == 2
    assert "--amp bf16" in capsys.readouterr().err
    assert sofa("eval", tmp_path / "nowhere") == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_the_recipe_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in (
        "--epochs",
        "--batch-size",
        "--lr",
        "--weight-decay",
        "--warmup-epochs",
        "--img-size",
        "--workers",
        "--seed",
        "--output",
        "--config",
        "--resume",
        "--mixup",
        "--cutmix",
        "--aa",
        "--reprob",
        "--drop-path",
        "--clip-grad",
        "--ema",
        "--amp",
        "--channels-last",
        "--compile",
        "--grad-checkpointing",
        "--smoothing",
    ):
        assert opt in text, opt


def test_eval_crop_and_interpolation_come_from_the_pretrained_cfg(folder):
    import timm

    from sofa.cli import build_parser
    from sofa.train.classification import ClassificationTask
    from sofa.train.cli import resolve_train_config

    parser = build_parser()
    args = parser.parse_args(["train", "--data", str(folder), "--model", "test_vit", "--img-size", "16"])
    cfg = resolve_train_config(args, **args.func.__wrapped__.keywords)
    task = ClassificationTask(cfg, log=lambda m: None)
    task.build_model()
    pc = timm.create_model("test_vit").pretrained_cfg
    assert task.data_config["crop_pct"] == pc["crop_pct"] and task.data_config["interpolation"] == pc["interpolation"]
    assert task.data_config["input_size"] == (3, 16, 16)
    _, val = task.build_datasets()
    assert tuple(val[0][0].shape) == (3, 16, 16)
    cfg.crop_pct, cfg.interpolation = 1.0, "bilinear"  # the options override it
    t2 = ClassificationTask(cfg, log=lambda m: None)
    t2.build_model()
    assert t2.data_config["crop_pct"] == 1.0 and t2.data_config["interpolation"] == "bilinear"


@pytest.mark.slow
def test_default_digits_run_reaches_95_percent(tmp_path, capsys):
    """`sofa train` with no options (the `make demo` run): ≥95% test accuracy (its time is the README's)."""
    assert sofa("train", "--output", tmp_path / "demo") == 0
    last = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["val_top1"] >= 95.0, last


@pytest.mark.slow
def test_torch_compile_option(folder, tmp_path):
    assert sofa("train", "--data", folder, *TINY, "--epochs", 1, "--compile", "--output", tmp_path / "c") == 0
    assert (tmp_path / "c" / "model.safetensors").is_file()


def test_resume_a_finished_run_with_more_epochs(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "more"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert sofa("train", "--resume", copy, "--epochs", 3, "--threads", 1) == 0
    text = capsys.readouterr().out
    assert "resumed" in text and "--epochs changed from 2 to 3" in text and "epoch 3/3" in text
    state = torch.load(copy / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["config"]["epochs"] == 3


@pytest.mark.parametrize(
    "task, data", [("classification", "digits"), ("segmentation", "shapes"), ("detection", "shapes")]
)
def test_default_data_is_the_tasks_own(task, data):
    """With no --data each task gets its own default data (and that data's profile), not classification's."""
    from sofa.cli import build_parser
    from sofa.train.cli import resolve_train_config

    args = build_parser().parse_args(["train", "--task", task])
    cfg = resolve_train_config(args, **args.func.__wrapped__.keywords)
    assert cfg.data == data


def _resolved(*argv):
    from sofa.cli import build_parser
    from sofa.train.cli import resolve_train_config

    args = build_parser().parse_args(["train", *map(str, argv)])
    return resolve_train_config(args, **args.func.__wrapped__.keywords)


def test_workers_default_to_the_cpus_this_process_may_use(folder, monkeypatch, capsys):
    """Per rank: the CPUs of this process's affinity, at most 8, shared by the ranks on the machine."""
    import os

    from sofa.train.config import default_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert default_workers() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert default_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert default_workers() == 2
    monkeypatch.undo()
    assert _resolved("--data", folder).workers == default_workers()
    assert _resolved().workers == 1  # digits keeps its profile
    assert _resolved("--data", folder, "--workers", 3).workers == 3
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "the CPUs this process may use, at most 8" in " ".join(capsys.readouterr().out.split())


def test_warmup_warning_only_when_the_run_never_leaves_warmup(folder):
    from sofa.train.trainer import warmup_warning

    assert "never reaches its peak --lr 0.001" in warmup_warning(_resolved("--data", folder, "--epochs", 5))
    assert warmup_warning(_resolved("--data", folder, "--epochs", 6)) is None
    assert warmup_warning(_resolved("--data", folder, "--epochs", 1, "--warmup-epochs", 0)) is None


def _curves(records):
    from sofa.train.plot import select_curves

    curves = select_curves(records)
    return {panel: {label: (x, y) for label, x, y in lines} for panel, lines in curves.items()}


def test_curves_lr_from_epoch_records_when_few_steps_are_logged():
    """Short epochs and --log-interval 20: one step record in 5 epochs; the lr panel still shows all 5 epochs."""
    epochs = [
        {
            "type": "epoch",
            "epoch": e,
            "global_step": 4 * e,
            "lr": 1e-4 * e,
            "train_loss": 1.0 / e,
            "val_top1": 20.0 * e,
            "val_count": 40,
        }
        for e in range(1, 6)
    ]
    step = {"type": "step", "epoch": 4.5, "global_step": 18, "lr": 4.5e-4, "loss": 0.3}
    curves = _curves(epochs[:4] + [step] + epochs[4:])
    x, y = curves["lr"]["learning rate"]
    assert x == [1, 2, 3, 4, 4.5, 5] and y == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4, 4.5e-4, 5e-4])
    assert set(curves["accuracy"]) == {"val top1"}


def test_curves_never_put_a_count_on_the_accuracy_axis():
    """A task's validation scores are plotted (segmentation's mIoU ...), its counts and losses are not."""
    recs = [
        {
            "type": "epoch",
            "epoch": e,
            "global_step": e,
            "lr": 1e-3,
            "val_mIoU": 10.0 * e,
            "val_aAcc": 50.0,
            "val_images": 8,
            "val_num_samples": 8,
            "val_loss": 1.0,
            "val_pixel_count": 512,
            "val_seconds": 1.5,
        }
        for e in (1, 2)
    ]
    curves = _curves(recs)
    assert set(curves["accuracy"]) == {"val mIoU", "val aAcc"}
    assert curves["accuracy"]["val mIoU"] == ([1, 2], [10.0, 20.0])
    assert set(curves["loss"]) == {"val loss"}


def test_curves_png_axes_show_the_selected_curves(tmp_path, monkeypatch):
    """plot_metrics draws what select_curves chose: no count among the accuracy panel's lines."""
    import matplotlib.pyplot as plt

    from sofa.train.plot import plot_metrics

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    recs = [
        {
            "type": "epoch",
            "epoch": e,
            "global_step": e,
            "lr": 1e-3 * e,
            "train_loss": 1.0,
            "val_mIoU": 10.0 * e,
            "val_images": 8,
        }
        for e in (1, 2, 3)
    ]
    plot_metrics(recs, tmp_path / "curves.png")
    ax_loss, ax_acc, ax_lr = closed[0].axes
    assert [line.get_label() for line in ax_acc.get_lines()] == ["val mIoU"]
    assert list(ax_lr.get_lines()[0].get_xdata()) == [1, 2, 3]
    assert (tmp_path / "curves.png").stat().st_size > 0


def _rates(sched, epochs, warmup_epochs, updates):
    import argparse

    from sofa.train.trainer import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = argparse.Namespace(sched=sched, epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=0.0, min_lr=0.0)
    scheduler = build_scheduler(opt, cfg, steps_per_epoch=10)
    rates = []
    for u in updates:
        scheduler.step_update(u)
        rates.append(opt.param_groups[0]["lr"])
    return rates


def test_poly_schedule_is_linear_warmup_then_linear_decay_to_zero():
    """BERT's and the LRA harness's schedule (timm's default poly would be power 0.1, decaying from step 0)."""
    # 100 steps, 20 of warm-up: the peak at step 20, half of it half-way through the decay, 0 at the end
    rates = _rates("poly", 10, 2.0, [0, 10, 20, 60, 90, 100])
    assert rates == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.125, 0.0], abs=1e-6)
    assert _rates("poly", 10, 0.0, [0, 25, 50])[1:] == pytest.approx([0.75, 0.5], abs=1e-6)
    assert _rates("cosine", 4, 0.0, [20]) == pytest.approx([0.5], abs=1e-6)  # the others as timm has them
