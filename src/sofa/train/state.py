"""A run's state in small records: where it stands (:class:`Progress`), its best evaluation (:class:`Best`), the
epoch's meters, what the ranks agree on after a step, how it ended."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sofa.train.distributed import Dist
from sofa.train.stopping import StopRequests


@dataclass
class Progress:
    """Where a run stands: ``epoch`` epochs complete, ``step_in_epoch`` steps of the next one done,
    ``global_step`` optimiser steps in all. ``last.pt`` records it and ``--resume`` starts from it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class Best:
    """The best evaluation of the task's primary metric so far: its value, epoch (from 1) and which weights
    scored it ("model" or "ema"); all None before the first evaluation. ``last.pt`` keeps it as a dict."""

    metric: str
    value: float | None = None
    epoch: int | None = None
    which: str | None = None

    def consider(self, candidates: list[tuple[str, dict[str, Any]]], epoch: int, higher_is_better: bool) -> str | None:
        """Take the best of ``[(which, metrics)]`` where it beats the best so far; returns its ``which``, else
        None. A metric that is missing or NaN never counts."""
        improved = None
        for which, metrics in candidates:
            v = metrics.get(self.metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if self.value is None or (v > self.value if higher_is_better else v < self.value):
                self.value, self.epoch, self.which = float(v), epoch, which
                improved = which
        return improved


@dataclass
class EpochMeters:
    """This rank's training record of the epoch under way. ``sums`` holds the sample count (``count``) and the
    loss and each of the task's logs summed over samples; ``last.pt`` keeps it, so that a run resumed
    mid-epoch reports the whole epoch. ``samples`` and ``started`` time this session's part of the epoch."""

    sums: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, num_samples: int, loss: float, logs: dict[str, Any]) -> None:
        self.samples += num_samples
        self.sums["count"] = self.sums.get("count", 0.0) + num_samples
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss * num_samples
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * num_samples

    def averages(self) -> dict[str, float]:
        """Per-sample means of the loss and logs."""
        count = max(self.sums.get("count", 0.0), 1.0)
        return {k: v / count for k, v in self.sums.items() if k != "count"}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def images_per_s(self, world_size: int) -> float:
        """All ranks' training samples per second in this session."""
        return self.samples * world_size / max(self.elapsed(), 1e-9)


@dataclass
class StepRequests:
    """What all ranks agree on after a step's forward pass, each the largest of the ranks' answers: the loss
    is not finite, a checkpoint was asked for (SIGUSR1), the number of a signal that asked the run to stop
    (0: none)."""

    loss_not_finite: bool
    save: bool
    stop_signal: int

    @classmethod
    def agree(cls, d: Dist, loss: torch.Tensor, requests: StopRequests) -> StepRequests:
        flags = torch.tensor(
            [
                0.0 if torch.isfinite(loss.detach()).item() else 1.0,
                float(requests.save),
                float(requests.stop_signal or 0),
            ]
        )
        if d.distributed:  # NCCL reduces device tensors only
            flags = flags.to(d.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        return cls(bool(flags[0] > 0), bool(flags[1] > 0), int(flags[2]))


@dataclass
class Stopped:
    """A stop signal ended the run: its number and where (e.g. "after epoch 2")."""

    signal: int
    where: str


@dataclass
class TrainResult:
    run_dir: Path
    best: Best
    last_metrics: dict[str, Any]
    files: dict[str, str]
    #: the signal that stopped the run before its last epoch (``last.pt`` holds the step reached), else None
    stopped_by: int | None = None
