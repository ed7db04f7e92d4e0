"""Callbacks that make a training run crash, stop or report at a chosen step, for the tests of resuming, stopping,
NaN detection and DDP; and a command that runs ``sofa`` with them, for tests that need the run in a process of
its own (``python tests/train_callbacks.py [OPTIONS] -- train ...``, also under torchrun).

Steps are global optimiser steps counted from 1, as ``metrics.jsonl`` records them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from sofa.train.trainer import Callback, Trainer

#: this file, to run as a script
SCRIPT = Path(__file__).resolve()


class KillAtStep(Callback):
    """SIGKILL this process after step ``step``: a crash that leaves no chance to save anything."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer: Trainer, global_step: int) -> None:
        if global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtSteps(Callback):
    """Send this process the signal ``signals[step]`` after each of those steps."""

    def __init__(self, signals: dict[int, signal.Signals]):
        self.signals = signals

    def on_step_end(self, trainer: Trainer, global_step: int) -> None:
        if global_step in self.signals:
            os.kill(os.getpid(), self.signals[global_step])


class WaitForStopAfterStep(Callback):
    """After step ``step``, wait (up to a minute) until a stop signal has come, so that it lands at a known step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer: Trainer, global_step: int) -> None:
        if global_step != self.step:
            return
        deadline = time.monotonic() + 60
        while not trainer.stop_requests.stop and time.monotonic() < deadline:
            time.sleep(0.02)


class NanImagesAtStep(Callback):
    """Fill the images of step ``step``'s batch (a classification batch: images, labels) with NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_start(self, trainer: Trainer, batch) -> None:
        if trainer.progress.global_step + 1 == self.step:
            batch[0].fill_(float("nan"))


class SaveRankWeights(Callback):
    """At the end of training every rank writes its weights to ``folder/rank<R>.safetensors``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def on_train_end(self, trainer: Trainer) -> None:
        from sofa.checkpoint import save_weights

        rank = trainer.dist.rank
        save_weights(self.folder / f"rank{rank}.safetensors", trainer.model.state_dict(), {"rank": rank})


def main(argv: list[str]) -> int:
    """``[--kill-at-step N] [--wait-for-stop-after-step N] [--save-rank-weights DIR] -- SOFA ARGS...``"""
    from sofa.cli import main as sofa_main

    split = argv.index("--")
    p = argparse.ArgumentParser(prog="train_callbacks.py")
    p.add_argument("--kill-at-step", type=int)
    p.add_argument("--wait-for-stop-after-step", type=int)
    p.add_argument("--save-rank-weights", metavar="DIR")
    opts = p.parse_args(argv[:split])
    callbacks: list[Callback] = []
    if opts.kill_at_step is not None:
        callbacks.append(KillAtStep(opts.kill_at_step))
    if opts.wait_for_stop_after_step is not None:
        callbacks.append(WaitForStopAfterStep(opts.wait_for_stop_after_step))
    if opts.save_rank_weights is not None:
        callbacks.append(SaveRankWeights(opts.save_rank_weights))
    return sofa_main(argv[split + 1 :], callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
