"""A run killed with SIGKILL mid-epoch, or stopped by SIGTERM or Ctrl-C, and resumed ends with the same weights as
the run never interrupted.

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

from helpers import LOG_EVERY_STEP, ONE_THREAD, last_step, train_held_after_step
from train_callbacks import SCRIPT, SignalAtSteps

ARGS = [
    "--model",
    "test_vit",
    "--img-size",
    "16",
    "--epochs",
    "3",
    "-b",
    "4",
    "--seed",
    "7",
    "--workers",
    "2",
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--aa",
    "rand-m9-mstd0.5-inc1",
    "--reprob",
    "0.25",
    "--drop-path",
    "0.1",
    "--ema",
    "--ema-decay",
    "0.9",
    *LOG_EVERY_STEP,
]


def _train_in_process(*argv) -> None:
    assert main(["train", *map(str, argv)]) == 0


def _train_killed(*argv, kill_at: int) -> None:
    p = subprocess.run(
        [sys.executable, SCRIPT, "--kill-at-step", str(kill_at), "--", "train", *map(str, argv)],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=300,
    )
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
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
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


def test_checkpoint_on_demand_and_sigterm_then_resume_matches(data, reference, tmp_path, capsys):
    """SIGUSR1 writes last.pt at the next step and training goes on; SIGTERM (preemption) writes it and stops
    (exit 143); --resume then finishes the same run."""
    out = tmp_path / "run"
    capsys.readouterr()
    signals = SignalAtSteps({2: signal.SIGUSR1, 9: signal.SIGTERM})
    code = main(["train", "--data", str(data), *ARGS, "--output", str(out)], callbacks=[signals])
    assert code == 128 + signal.SIGTERM
    text = capsys.readouterr().out
    assert "(on request) at epoch 1, step 3" in text
    assert (
        f"stopped by SIGTERM at epoch 2, step 4/6 (global step 10), saved {out / 'last.pt'}; continue with: "
        f"sofa train --resume {out}" in text
    )
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 4)
    _train_in_process("--resume", out)
    _same_state(reference, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_saves_the_step_reached_and_resumes_exactly(data, reference, tmp_path, capsys, sig):
    """What `timeout`, scancel, systemd (SIGTERM) and Ctrl-C (SIGINT) do: signal the whole process group, the two
    data-loader workers included. The run saves last.pt at the step under way, says how to continue, exits with
    128 + the signal's number, and --resume finishes it exactly like the uninterrupted run."""
    out = tmp_path / "run"
    log = tmp_path / "output.txt"
    # the run waits after step 8 (epoch 2, step 2) until the signal comes, then notices it during step 9
    with train_held_after_step(8, ["--data", data, *ARGS], out, log) as p:
        os.killpg(p.pid, sig)
        p.wait(timeout=240)
    text = log.read_text()
    assert p.returncode == 128 + sig, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert f"continue with: sofa train --resume {out}" in text
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 9) == (1, 3, last_step(out))
    capsys.readouterr()
    _train_in_process("--resume", out)
    assert f"resumed {out} at epoch 2, step 3/6" in capsys.readouterr().out
    _same_state(reference, out)
    assert _records(out) == _records(reference)
