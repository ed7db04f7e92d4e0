"""``sofa train --task lra-listops|lra-text|lra-retrieval|lra-image|lra-pathfinder``: the Long Range Arena tasks.

Each task trains an LRA classifier (:mod:`sofa.models.lra`: ``lra_softmax``, ``lra_soft``, ``lra_soft_norm``,
``lra_set``, ``lra_pool``) on data read by :func:`sofa.data.lra.open_lra_dataset` from ``--data DIR``, with the
schedule of the Nyströmformer LRA harness (``LRA/code/lra_config.py``; Skyformer and xformers reuse it):

============  =====  ======  =======  ==========  ================
task          batch  lr      warm-up  steps       evaluate every
============  =====  ======  =======  ==========  ================
listops       32     1e-4    1,000    5,000       50 steps
text          32     1e-4    8,000    20,000      500 steps
retrieval     32     1e-4    800      30,000      300 steps
image         256    1e-4    175      35,000      175 steps
pathfinder    256    1e-4    312      62,400      312 steps
============  =====  ======  =======  ==========  ================

AdamW without weight decay, dropout 0.1 in the model, no gradient clipping. The loop counts in epochs, so one
epoch of the loop is one evaluation interval here: ``--eval-interval`` steps whose samples are drawn uniformly
(with replacement) from the training split, each draw seeded by the loop's ``(seed, epoch, position)`` so that a
run is reproducible, resumable and sharded like any other; ``--epochs`` defaults to ``--steps`` /
``--eval-interval`` and ``--warmup-epochs`` to ``--warmup-steps`` / ``--eval-interval``. Every interval the model
is evaluated on the whole validation split; the loop keeps the best one (``best.safetensors``, by accuracy). When
training ends, that best checkpoint is scored on the test split and ``results.json`` records validation and test
accuracy, steps, wall time and peak memory.

The learning rate rises linearly from lr/25 over the warm-up and then falls linearly to 0 at the last step, as
the harness's ``OneCycleLR(anneal_strategy="linear")`` does (the loop's ``--sched poly``). What differs from the
harness, on purpose or by the loop's design: the harness evaluates on the first ~2,000 (or
25,000) validation samples of an endless iterator, here the whole split; ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from sofa.data.sampling import IntervalDraws
from sofa.errors import UserError
from sofa.train.task import FinishedRun, StepOutput, Task, TrainingClock, register_task, unwrap

__all__ = ["LRATask", "HARNESS", "LRA_TASKS"]

#: the Nyströmformer harness's training settings (lra_config.py), per LRA task
HARNESS: dict[str, dict[str, Any]] = {
    "listops": dict(batch_size=32, lr=1e-4, warmup_steps=1000, steps=5000, eval_interval=50),
    "text": dict(batch_size=32, lr=1e-4, warmup_steps=8000, steps=20000, eval_interval=500),
    "retrieval": dict(batch_size=32, lr=1e-4, warmup_steps=800, steps=30000, eval_interval=300),
    "image": dict(batch_size=256, lr=1e-4, warmup_steps=175, steps=35000, eval_interval=175),
    "pathfinder": dict(batch_size=256, lr=1e-4, warmup_steps=312, steps=62400, eval_interval=312),
}
#: OneCycleLR's default: the warm-up starts at lr / 25
WARMUP_START_DIVISOR = 25.0
#: pixels of the LRA images (32×32, read whole): the positions of an image task's model
IMAGE_TOKENS = 1024
IMAGE_TASKS = ("image", "pathfinder")
#: the options ``results.json`` repeats under "settings"
RESULT_SETTINGS = ("batch_size", "lr", "warmup_steps", "steps", "eval_interval", "max_len", "vocab_size", "seed", "amp")
LRA_MODELS = ("lra_softmax", "lra_soft", "lra_soft_norm", "lra_set", "lra_pool")


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """The run's peak memory on this rank and what was measured."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated (tensors on the GPU)"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return (
        int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale,
        "peak resident memory of the process (ru_maxrss), Python and torch included",
    )


class LRATask(Task):
    """One LRA task (``lra_task`` of :data:`HARNESS`); see the module docstring."""

    lra_task = ""
    primary_metric = "acc"
    sample_unit = "seq"
    higher_is_better = True
    defaults: dict[str, Any] = {"model": "lra_soft"}

    @classmethod
    def add_args(cls, p: argparse._ActionsContainer) -> None:
        p.add_argument(
            "--steps",
            type=int,
            default=None,
            help="LRA: training steps (default: the harness's, e.g. 5000 for ListOps); sets --epochs",
        )
        p.add_argument(
            "--eval-interval",
            type=int,
            default=None,
            help="LRA: steps between evaluations, one epoch of the loop (default: the harness's)",
        )
        p.add_argument(
            "--warmup-steps",
            type=int,
            default=None,
            help="LRA: linear warm-up steps (default: the harness's); sets --warmup-epochs",
        )
        p.add_argument(
            "--max-len",
            type=int,
            default=None,
            help="LRA text tasks: tokens per sequence (per document for retrieval), longer ones are cut "
            "(default LRA's: 2000 ListOps, 4000 text and retrieval)",
        )
        p.add_argument(
            "--difficulty",
            default=None,
            help="LRA Pathfinder: easy, intermediate or hard (default hard, as LRA reports)",
        )
        p.add_argument("--vocab-size", type=int, default=None, help="LRA: embedding rows (default: from the data)")
        p.add_argument(
            "--eval-split",
            default=None,
            choices=("val", "test"),
            help="LRA, sofa eval: the split to measure (default val)",
        )

    @classmethod
    def profile(cls, cfg: argparse.Namespace) -> dict[str, Any]:
        """The harness's schedule in the loop's terms, from the steps and interval known so far."""
        h = HARNESS[cls.lra_task]
        steps = getattr(cfg, "steps", None) or h["steps"]
        interval = getattr(cfg, "eval_interval", None) or h["eval_interval"]
        warmup = getattr(cfg, "warmup_steps", None)
        warmup = h["warmup_steps"] if warmup is None else warmup
        lr = getattr(cfg, "lr", None) or h["lr"]
        return dict(
            steps=steps,
            eval_interval=interval,
            warmup_steps=warmup,
            epochs=math.ceil(steps / interval),
            warmup_epochs=warmup / interval,
            batch_size=h["batch_size"],
            lr=h["lr"],
            warmup_lr=lr / WARMUP_START_DIVISOR,
            min_lr=0.0,
            weight_decay=0.0,
            sched="poly",
            opt="adamw",
            drop_path=0.0,
            clip_grad=None,
            difficulty="hard",
            eval_split="val",
        )

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        self._splits: dict[str, Dataset] = {}
        self.clock = TrainingClock()

    # ---------------------------------------------------------------- data
    @property
    def is_image(self) -> bool:
        return self.lra_task in IMAGE_TASKS

    def dataset(self, split: str) -> Dataset:
        """One split of the task's data (opened once)."""
        if split not in self._splits:
            from sofa.data.lra import open_lra_dataset

            data = str(self.cfg.data or "")
            if not data or data == "digits" or not os.path.exists(data):
                raise UserError(
                    f"--task lra-{self.lra_task} needs --data DIR holding the LRA {self.lra_task} data"
                    + (f" ({data} does not exist)" if data and data != "digits" else "")
                    + (
                        ": `sofa data listops DIR` writes ListOps"
                        if self.lra_task == "listops"
                        else "; see docs/lra_data.md for the layouts read"
                    )
                )
            max_len = None if self.is_image else getattr(self.cfg, "max_len", None)
            self._splits[split] = open_lra_dataset(
                data, self.lra_task, split, max_len, difficulty=getattr(self.cfg, "difficulty", None) or "hard"
            )
        return self._splits[split]

    def build_datasets(self):
        train, val = self.dataset("train"), self.dataset("val")
        interval, batch = int(self.cfg.eval_interval), int(self.cfg.batch_size)
        self.log(
            f"lra-{self.lra_task}: {len(train)} training / {len(val)} validation sequences ({train.layout}); "
            f"an epoch is one evaluation interval of {interval} steps, {interval * batch} sequences per "
            f"process drawn from the training split"
        )
        return IntervalDraws.for_interval(train, interval, batch), val

    def data_summary(self, n_train: int, n_val: int) -> str:
        return f"{n_train} sequences drawn per epoch / {n_val} val, {self._positions()} positions"

    def build_eval_dataset(self):
        return self.dataset(getattr(self.cfg, "eval_split", None) or "val")

    def collate_fn(self, split: str):
        from sofa.data.lra import collate_lra

        return collate_lra

    # ---------------------------------------------------------------- model
    def _positions(self) -> int:
        from sofa.data.lra import DEFAULT_MAX_LEN
        from sofa.models.lra import next_power_of_two

        if self.is_image:
            return IMAGE_TOKENS
        return next_power_of_two(getattr(self.cfg, "max_len", None) or DEFAULT_MAX_LEN[self.lra_task])

    def _vocab_size(self) -> int:
        """From the options (a resumed or evaluated run keeps its own), else the largest over the splits (the
        harness's pickles carry their own ids; every other layout has a fixed vocabulary)."""
        given = getattr(self.cfg, "vocab_size", None)
        if given:
            return int(given)
        sizes = [self.dataset(s).vocab_size for s in ("train", "val")]
        try:
            sizes.append(self.dataset("test").vocab_size)
        except UserError:
            pass  # a missing test split is reported when it is needed
        self.cfg.vocab_size = max(sizes)
        return self.cfg.vocab_size

    def build_model(self) -> nn.Module:
        import sofa
        from sofa.data.lra.readers import NUM_CLASSES
        from sofa.models import family_of

        name = self.cfg.model
        if family_of(name) != "lra":
            raise UserError(
                f"--task lra-{self.lra_task} trains a sequence model: {', '.join(LRA_MODELS)}; got --model {name}"
            )
        return sofa.create_model(
            name,
            num_classes=NUM_CLASSES[self.lra_task],
            vocab_size=self._vocab_size(),
            max_len=self._positions(),
            dual=self.lra_task == "retrieval",
            padding_id=None if self.is_image else 0,
        )

    # ---------------------------------------------------------------- steps
    def train_step(self, model, batch) -> StepOutput:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        with torch.no_grad():
            acc = (logits.argmax(-1) == y).float().mean() * 100.0
        return StepOutput(loss, {"acc": acc}, int(y.shape[0]))

    def eval_step(self, model, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x).float()
        return {
            "loss_sum": F.cross_entropy(logits, y, reduction="sum"),
            "correct": (logits.argmax(-1) == y).sum(),
            "count": torch.tensor(float(y.shape[0])),
        }

    def finalize_eval(self, sums) -> dict[str, float]:
        n = float(sums.get("count", torch.tensor(0.0)))
        if n == 0:
            return {"acc": 0.0, "loss": float("nan"), "count": 0}
        return {"acc": float(sums["correct"]) * 100.0 / n, "loss": float(sums["loss_sum"]) / n, "count": int(n)}

    # ---------------------------------------------------------------- bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return self.clock.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock.load_state_dict(state)

    def checkpoint_metadata(self) -> dict[str, Any]:
        from sofa.data.lra.readers import NUM_CLASSES

        return {
            "lra_task": self.lra_task,
            "num_classes": NUM_CLASSES[self.lra_task],
            "vocab_size": getattr(self.cfg, "vocab_size", None),
            "positions": self._positions(),
        }

    def after_training(self, model: nn.Module, run: FinishedRun) -> dict[str, str]:
        """Score the best validation checkpoint on the test split; write ``results.json``."""
        seconds = self.clock.seconds()
        scored = self._load_best(model, run.run_dir / "best.safetensors")
        t0 = time.perf_counter()
        test_metrics = self.evaluate(model, run.loader(self.dataset("test"), "val"), run.ctx)
        test_seconds = time.perf_counter() - t0
        results = self._results(model, run, test_metrics, scored)
        results.update(wall_time_s=round(seconds, 3), test_time_s=round(test_seconds, 3))
        results.update(self._gathered_peak_memory(run))
        results["device"], results["processes"] = str(run.ctx.device), run.ctx.world_size
        results["params"] = sum(p.numel() for p in model.parameters())
        results["settings"] = {k: getattr(self.cfg, k, None) for k in RESULT_SETTINGS}
        if run.ctx.rank == 0:
            from sofa.checkpoint import atomic_write_text

            atomic_write_text(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        best = run.best
        dev = "-" if best.get("value") is None else f"{best['value']:.2f}"
        self.log(
            f"test accuracy {test_metrics['acc']:.2f} ({scored}: validation accuracy {dev}"
            + (f" after {results['best_step']} steps" if results["best_step"] else "")
            + ")"
        )
        return {"results.json": "validation and test accuracy, steps, wall time, peak memory"}

    @staticmethod
    def _load_best(model: nn.Module, best_file: Path) -> str:
        """Load the best validation weights where they were written; returns what the test score is of."""
        if not best_file.is_file():
            return "the final weights (no validation result was recorded)"
        from safetensors.torch import load_file

        unwrap(model).load_state_dict(load_file(str(best_file)))
        return "the best validation checkpoint"

    def _results(self, model: nn.Module, run: FinishedRun, test_metrics: dict, scored: str) -> dict[str, Any]:
        """The accuracy fields of ``results.json``, in the file's order."""
        best = run.best
        interval = int(self.cfg.eval_interval)
        return {
            "task": f"lra-{self.lra_task}",
            "model": self.cfg.model,
            "data": str(self.cfg.data),
            "dev_acc": best.get("value"),
            "test_acc": test_metrics["acc"],
            "test_loss": test_metrics["loss"],
            "test_count": test_metrics["count"],
            "scored": scored,
            "best_epoch": best.get("epoch"),
            "best_step": None if best.get("epoch") is None else int(best["epoch"]) * interval,
            "steps": run.global_step,
        }

    @staticmethod
    def _gathered_peak_memory(run: FinishedRun) -> dict[str, Any]:
        """The peak memory over the processes, and how it was measured."""
        peak, method = _peak_memory(run.ctx.device)
        return {"peak_memory_bytes": max(run.ctx.all_gather_object(peak)), "peak_memory_method": method}


def _task_class(name: str) -> type[LRATask]:
    return type(f"LRA{name.title()}Task", (LRATask,), {"lra_task": name, "__doc__": f"LRA {name} (lra-{name})."})


LRA_TASKS: dict[str, type[LRATask]] = {f"lra-{name}": _task_class(name) for name in HARNESS}
for _name, _cls in LRA_TASKS.items():
    register_task(_name, _cls)
