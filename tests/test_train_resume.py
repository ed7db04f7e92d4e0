"""A run killed with SIGKILL mid-epoch and resumed ends with the same weights as the run never interrupted.

Everything random is on (Mixup/CutMix, RandAugment, random erasing, drop path, EMA, two loader workers), so the
test also proves that data order and augmentation replay exactly after a resume. The killed run is a separate
process; the uninterrupted reference and the resumed runs run in this process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sofa.cli import main
from sofa.data.synthetic import make_image_folder

ARGS = ["--model", "test_vit", "--img-size", "16", "--epochs", "3", "-b", "4", "--seed", "7", "--workers", "2",
        "--mixup", "0.8", "--cutmix", "1.0", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--drop-path", "0.1",
        "--ema", "--ema-decay", "0.9", "--threads", "1", "--progress", "log", "--log-interval", "1"]


def _train_in_process(*argv) -> None:
    assert main(["train", *map(str, argv)]) == 0


def _train_killed(*argv, kill_at: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", SOFA_DEBUG_KILL_AT_STEP=str(kill_at))
    p = subprocess.run([sys.executable, "-m", "sofa", "train", *map(str, argv)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])


def _same_state(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "model_ema.safetensors", "best.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
    sa, sb = torch.load(a / "last.pt", weights_only=True), torch.load(b / "last.pt", weights_only=True)
    assert sa["global_step"] == sb["global_step"] == 18 and sa["epoch"] == sb["epoch"] == 3
    for pid, st in sa["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st[key], sb["optimizer"]["state"][pid][key], rtol=1e-5, atol=1e-8)
    assert sa["scheduler"] == sb["scheduler"] and sa["best"] == sb["best"]


def _records(run: Path) -> list[dict]:
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in recs]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=8, val_per_class=2)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    _train_in_process("--data", data, *ARGS, "--output", out)
    return out


def _kill_and_resume(data, reference, out, save_every, kill_at, expect, capsys):
    # 24 images, batch 4: 6 steps per epoch, 18 in all
    _train_killed("--data", data, *ARGS, "--output", out, "--save-every-steps", save_every, kill_at=kill_at)
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == expect
    capsys.readouterr()
    _train_in_process("--resume", out)
    assert f"resumed {out} at epoch {expect[0] + 1}, step {expect[1]}/6" in capsys.readouterr().out
    _same_state(reference, out)
    # the metrics the killed process wrote after its checkpoint were dropped, not duplicated
    assert _records(out) == _records(reference)


def test_sigkill_mid_epoch_resume_from_mid_epoch_checkpoint(data, reference, tmp_path, capsys):
    """Killed at global step 10 (epoch 2, step 4); the last checkpoint is from step 8 (epoch 2, step 2)."""
    _kill_and_resume(data, reference, tmp_path / "run", 4, 10, (1, 2), capsys)


@pytest.mark.slow
def test_sigkill_mid_epoch_resume_from_epoch_checkpoint(data, reference, tmp_path, capsys):
    """Killed at global step 8 (epoch 2, step 2) with only the end-of-epoch-1 checkpoint."""
    _kill_and_resume(data, reference, tmp_path / "run", 0, 8, (1, 0), capsys)


def test_checkpoint_on_demand_and_sigterm_then_resume_matches(data, reference, tmp_path, capsys, monkeypatch):
    """SIGUSR1 writes last.pt at the next step and training goes on; SIGTERM (preemption) writes it and stops
    (exit 0); --resume then finishes the same run."""
    out = tmp_path / "run"
    monkeypatch.setenv("SOFA_DEBUG_SIGNAL_AT_STEP", "2:USR1,9:TERM")
    capsys.readouterr()
    _train_in_process("--data", data, *ARGS, "--output", out)
    text = capsys.readouterr().out
    assert "(on request) at epoch 1, step 3" in text
    assert "stopped on SIGTERM; continue with: sofa train --resume" in text
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 4)
    monkeypatch.delenv("SOFA_DEBUG_SIGNAL_AT_STEP")
    _train_in_process("--resume", out)
    _same_state(reference, out)
