"""Pieces several test files share: the options of tiny training runs, and runs in processes of their own
(a run held after a step until a signal comes, two CPU processes under torchrun)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from train_callbacks import SCRIPT

#: a classification run that takes seconds: the tiny ViT on 16-pixel images, in this process, one thread (on a
#: shared, loaded 2-core machine several times faster than two for models this small), log lines
TINY_TRAIN = ["--model", "test_vit", "--img-size", "16", "--workers", "0", "--threads", "1", "--progress", "log"]
#: one thread, every step's metrics in metrics.jsonl and a log line each
LOG_EVERY_STEP = ["--threads", "1", "--progress", "log", "--log-interval", "1"]
#: a segmentation run on the synthetic shapes that takes seconds: 48-pixel crops, a 16-channel decoder
TINY_SEGMENTATION = (
    "--model poolformer_mini --batch-size 3 --workers 0 --progress none "
    "--crop-size 48 --seg-scale 128 48 --decoder-channels 16"
).split()
#: the environment of a run in a process of its own: one thread per process
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


def last_step(run: Path) -> int:
    """The last global step the run's metrics.jsonl records (0 before any; a line being written is passed over)."""
    path = run / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["global_step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


@contextlib.contextmanager
def train_held_after_step(step: int, train_args: Sequence, out: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``sofa train TRAIN_ARGS --output OUT`` in a process (and process group) of its own that waits after step
    ``step`` until a stop signal comes (:data:`train_callbacks.SCRIPT`), its output in ``log``. Yields the
    process once metrics.jsonl records the step and last.pt exists; kills it at the end if it still runs."""
    with open(log, "w") as sink:
        p = subprocess.Popen(
            [sys.executable, SCRIPT, "--wait-for-stop-after-step", str(step), "--", "train", *map(str, train_args)]
            + ["--output", str(out)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=ONE_THREAD,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while last_step(out) < step or not (out / "last.pt").exists():
            assert p.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the run did not reach step {step}"
            time.sleep(0.05)
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def torchrun_two_cpu_processes(script_args: Sequence, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=2 SCRIPT SCRIPT_ARGS`` (gloo on the CPU, one thread per
    process) in ``cwd``; asserts it exits with 0 and returns it (its stdout and stderr as text)."""
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT]
        + [str(a) for a in script_args],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=400,
        cwd=cwd,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p
