"""``sofa train --task lra-*``: every task from a tiny fixture, the harness's defaults, a ListOps run that learns."""

from __future__ import annotations

import argparse
import json
import signal
from collections import Counter

import pytest
import torch
import yaml

from sofa.cli import main
from sofa.data.lra import open_lra_dataset
from sofa.data.sampling import IntervalDraws
from sofa.train.lra import HARNESS, LRA_TASKS

from helpers import torchrun_two_cpu_processes
from lra_fixtures import WRITERS
from train_callbacks import SignalAtSteps

#: each task with another model, so that every model trains once through the loop
TASK_MODELS = {
    "listops": "lra_soft",
    "text": "lra_soft_norm",
    "retrieval": "lra_set",
    "image": "lra_pool",
    "pathfinder": "lra_softmax",
}
QUIET = ["--workers", "0", "--threads", "1", "--progress", "none"]
#: four steps of two samples, evaluated after two
SHORT = ["--steps", "4", "--eval-interval", "2", "--warmup-steps", "1", "-b", "2"]


def train_listops(data, *argv) -> int:
    """``sofa train --task lra-listops --data DATA ARGV`` quietly, in this process; its exit code."""
    return main(["train", "--task", "lra-listops", "--data", str(data), *map(str, argv), *QUIET])


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_each_task_trains_and_scores_the_best_checkpoint_on_test(task, tmp_path, capsys):
    data = WRITERS[task](tmp_path / "data")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            f"lra-{task}",
            "--data",
            str(data),
            "--model",
            TASK_MODELS[task],
            *SHORT,
            "--output",
            str(run),
            *QUIET,
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((run / "results.json").read_text())
    test = open_lra_dataset(data, task, "test")
    assert results["task"] == f"lra-{task}" and results["model"] == TASK_MODELS[task]
    assert results["steps"] == 4 and results["test_count"] == len(test)
    assert results["best_step"] in (2, 4) and results["dev_acc"] is not None
    assert 0 <= results["test_acc"] <= 100 and results["wall_time_s"] > 0 and results["peak_memory_bytes"] > 0
    assert results["scored"] == "the best validation checkpoint"
    log = (run / "log.txt").read_text()
    assert f"evaluate: sofa eval {run}" in log and "sofa predict" not in log  # predict classifies images only
    assert " seq/s" in log and "img/s" not in log  # the epoch lines count sequences
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["vocab_size"] == test.vocab_size
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records if r["type"] == "epoch"] == [2, 4]  # an evaluation every 2 steps
    # sofa eval rebuilds the model from the run alone and measures the split asked for
    assert (
        main(
            [
                "eval",
                str(run / "best.safetensors"),
                "--eval-split",
                "test",
                "--output",
                str(tmp_path / "eval.json"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    measured = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert measured["count"] == len(test) and measured["acc"] == pytest.approx(results["test_acc"])


def test_harness_defaults_become_the_loops_options():
    listops = LRA_TASKS["lra-listops"].profile(argparse.Namespace())
    assert (listops["batch_size"], listops["lr"], listops["weight_decay"]) == (32, 1e-4, 0.0)
    assert listops["epochs"] == 5000 // 50 and listops["warmup_epochs"] == 1000 / 50
    assert listops["warmup_lr"] == pytest.approx(1e-4 / 25) and listops["min_lr"] == 0.0
    image = LRA_TASKS["lra-image"].profile(argparse.Namespace(steps=None, eval_interval=None))
    assert image["batch_size"] == 256 and image["epochs"] == 200 and image["warmup_epochs"] == 1.0
    mine = LRA_TASKS["lra-text"].profile(argparse.Namespace(steps=1000, eval_interval=300, warmup_steps=0, lr=1e-3))
    assert mine["epochs"] == 4 and mine["warmup_epochs"] == 0 and mine["warmup_lr"] == pytest.approx(1e-3 / 25)
    assert set(HARNESS) == {"listops", "text", "retrieval", "image", "pathfinder"}


def test_interval_draws_follow_the_seeded_generator():
    data = [(torch.tensor([i]), i) for i in range(1000)]
    draws = IntervalDraws(data, 64)
    torch.manual_seed(3)
    first = [draws[i][1] for i in range(64)]
    torch.manual_seed(3)
    assert [draws[i][1] for i in range(64)] == first
    assert len(set(first)) > 50 and len(draws) == 64


def test_a_non_sequence_model_or_missing_data_is_refused(tmp_path, capsys):
    data = WRITERS["listops"](tmp_path / "data")
    assert train_listops(data, "--model", "soft_mini", "--steps", 2, "--output", tmp_path / "a") == 2
    assert "lra_soft" in capsys.readouterr().err
    assert main(["train", "--task", "lra-listops", "--output", str(tmp_path / "b"), *QUIET]) == 2
    assert "sofa data listops" in capsys.readouterr().err


def test_listops_run_beats_the_majority_class(tmp_path, capsys):
    """Short ListOps (20–60 tokens, 2,000 training expressions) with SOFT, the tasks's default model: a few
    hundred steps learn more than the label frequencies."""
    data = tmp_path / "listops"
    assert (
        main(
            [
                "data",
                "listops",
                str(data),
                "--train",
                "2000",
                "--val",
                "200",
                "--test",
                "200",
                "--min-length",
                "20",
                "--max-length",
                "60",
            ]
        )
        == 0
    )
    run = tmp_path / "run"
    schedule = ["--steps", 400, "--eval-interval", 50, "--warmup-steps", 40, "--lr", 2e-3]
    assert train_listops(data, *schedule, "--output", run) == 0
    results = json.loads((run / "results.json").read_text())
    labels = [label for _, label in open_lra_dataset(data, "listops", "test")]
    majority = 100.0 * Counter(labels).most_common(1)[0][1] / len(labels)
    assert results["model"] == "lra_soft" and results["steps"] == 400
    assert results["test_acc"] > majority + 8.0, (results["test_acc"], majority)
    # the harness's schedule: linear warm-up to the peak at step 40, then linear decay to 0 at step 400
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lr_at = {r["global_step"]: r["lr"] for r in rows if r.get("type") == "epoch"}
    assert [lr_at[s] for s in (50, 250, 400)] == pytest.approx([2e-3 * 350 / 360, 2e-3 * 150 / 360, 0.0], abs=1e-9)


def test_stopped_and_resumed_run_ends_like_the_uninterrupted_one(tmp_path, capsys):
    """The draws of each interval replay on --resume: the weights match the run never stopped."""
    from safetensors.torch import load_file

    data = WRITERS["listops"](tmp_path / "data")
    args = [
        "train",
        "--task",
        "lra-listops",
        "--data",
        str(data),
        "--model",
        "lra_set",
        "--steps",
        "6",
        "--eval-interval",
        "3",
        "--warmup-steps",
        "1",
        "-b",
        "3",
        "--lr",
        "1e-3",
        *QUIET,
    ]
    assert main([*args, "--output", str(tmp_path / "straight")]) == 0
    stop = SignalAtSteps({3: signal.SIGTERM})
    assert main([*args, "--output", str(tmp_path / "stopped")], callbacks=[stop]) == 128 + signal.SIGTERM
    assert not (tmp_path / "stopped" / "results.json").exists()  # stopped after the first interval
    assert main(["train", "--resume", str(tmp_path / "stopped"), *QUIET]) == 0
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "stopped" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7, msg=f"{name}: {k}")
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert resumed["steps"] == straight["steps"] == 6 and resumed["test_acc"] == straight["test_acc"]


def test_two_processes_with_torchrun(tmp_path):
    """DDP (gloo): two towers and tuple inputs through DistributedDataParallel, every parameter used, an interval
    of the same steps on each rank, the ranks agreeing, and the test split scored once over both ranks."""
    from safetensors.torch import load_file

    data = WRITERS["retrieval"](tmp_path / "data", rows_per_split=5)
    out, dump = tmp_path / "ddp", tmp_path / "ranks"
    train = ["train", "--task", "lra-retrieval", "--data", data, "--model", "lra_soft", *SHORT, "--output", out]
    torchrun_two_cpu_processes(["--save-rank-weights", dump, "--", *train, *QUIET, "--progress", "log"], tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 4
    assert results["test_count"] == len(open_lra_dataset(data, "retrieval", "test"))  # each sample once
    a, b = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
