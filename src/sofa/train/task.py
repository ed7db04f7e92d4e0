"""The task interface: what the training loop needs to know about a task, and nothing more.

``sofa train`` / ``sofa eval`` run one generic loop (``sofa.train.loop``) that owns everything a serious run
needs and that is the same for every task: device and distributed set-up (DDP, one shard per rank, only rank 0
writes), mixed precision, channels-last, torch.compile, gradient checkpointing, the optimiser (AdamW by default),
the cosine schedule with warm-up, gradient clipping, EMA of the weights, progress bars and log lines,
``metrics.jsonl`` and the curves PNG, atomic checkpoints every epoch and on demand, ``--resume``, NaN detection.

A *task* supplies the rest: its data, its model, its loss and its evaluation. Classification
(``sofa.train.classification.ClassificationTask``) is the first; segmentation and detection plug in the same way::

    from sofa.train.task import Task, register_task

    class SegmentationTask(Task):
        name = "segmentation"
        primary_metric = "mIoU"            # key of the dict ``evaluate`` returns; picks the best checkpoint
        higher_is_better = True

        @classmethod
        def add_args(cls, parser):          # task-only options; shown by ``sofa train --task segmentation -h``
            parser.add_argument("--crop-size", type=int, default=512)

        def build_datasets(self):           # -> (train dataset, validation dataset or None)
            ...
        def build_eval_dataset(self):       # -> the dataset ``sofa eval`` measures (default: validation one)
            ...
        def build_model(self):              # -> nn.Module (task head on a backbone from sofa.create_model)
            ...
        def train_step(self, model, batch): # -> StepOutput(loss, {"acc": ...}, num_samples)
            ...
        def eval_step(self, model, batch):  # -> {"name": tensor sum}; summed over batches and ranks
            ...
        def finalize_eval(self, sums):      # -> {"mIoU": float, "loss": float, ...}
            ...

    register_task("segmentation", SegmentationTask)

Contract details
----------------
* ``Task(cfg)``: ``cfg`` is an ``argparse.Namespace`` holding every resolved option: the loop's (``cfg.model``,
  ``cfg.data``, ``cfg.img_size``, ``cfg.batch_size``, ``cfg.workers``, ``cfg.seed``, ``cfg.drop_path``,
  ``cfg.grad_checkpointing``, ``cfg.channels_last``, ``cfg.output`` ...) and the task's own from ``add_args``.
  Options come from the command line, then a ``--config`` YAML/JSON file, then the task's defaults; a resumed
  run gets its saved config back. ``self.cfg`` is set by the base ``__init__``; ``self.log(msg)`` prints a
  line on rank 0 only (use it for warnings such as "head re-initialised").
* Call order in ``sofa train``: ``Task(cfg)``, ``build_model()``, ``build_datasets()``, then steps; in
  ``sofa eval``: ``Task(cfg)``, ``build_model()`` (the loop loads the evaluated weights into it; ``cfg.checkpoint``
  is set to None), ``build_eval_dataset()``, ``evaluate``.
* Datasets are map-style ``torch.utils.data.Dataset``. The loop shards them (each rank reads its part), shuffles
  with a generator seeded by ``(seed, epoch)``, and wraps the *training* dataset so that each sample's
  augmentation is seeded by ``(seed, epoch, index)`` (python ``random``, numpy and torch global RNGs are seeded
  before ``__getitem__``): augmentation is reproducible across workers, ranks and ``--resume``. Don't keep
  your own RNG state in datasets. Datasets must define ``__len__``. ``collate_fn(split)`` returns the
  DataLoader collate function (``None`` = PyTorch's default).
* Batches are moved to the device by ``to_device`` (recursively, tensors in tuples/lists/dicts; 4-D floating
  tensors are made channels-last when ``cfg.channels_last``). Override for other layouts.
* ``train_step`` runs the forward pass under the loop's autocast and returns ``StepOutput``: the scalar loss to
  back-propagate (the loop scales, clips, steps, and stops on NaN/Inf), ``logs`` (scalar tensors or floats,
  per-sample means, shown in the progress bar and averaged into metrics.jsonl as ``train_<name>``) and the
  number of samples in the batch. The model passed in may be DDP-wrapped and/or compiled: call it, don't
  reach into it (use ``sofa.train.task.unwrap(model)`` when you must).
* Evaluation: the default ``evaluate`` calls ``eval_step`` on every batch under ``torch.no_grad`` and autocast,
  sums the returned tensors (per batch: sums, not means), all-reduces the sums across ranks and hands them to
  ``finalize_eval``. Metrics that are not sums (e.g. COCO mAP) override ``evaluate(model, loader, ctx)``
  itself and gather with ``ctx.all_gather_object`` / ``ctx.all_reduce_sum``; it must return the same dict on
  every rank. ``primary_metric`` must be one of the returned keys.
* After the last epoch of ``sofa train`` (not after a stop on SIGTERM) the loop calls
  ``after_training(model, run)`` on every rank: ``run`` (a ``FinishedRun``) has the run directory, the best
  result, the step count, the evaluation context and a factory of sharded evaluation loaders. A task with a
  held-out test split scores ``best.safetensors`` there (the LRA tasks do); it returns the files it wrote
  (``{name: what it holds}``), which the final listing shows.
* Checkpoints: the loop saves model (+EMA), optimiser, scheduler, scaler, epoch/step, RNG states and the config.
  A task with its own state implements ``state_dict()`` / ``load_state_dict(d)``; values must be tensors or
  plain Python containers/primitives (the file is loaded with ``torch.load(weights_only=True)``).
  ``checkpoint_metadata()`` returns strings stored in the weights' safetensors metadata (e.g. class names),
  so ``sofa eval``/``predict`` can rebuild the model from the file alone.
* Errors a user can fix (missing data, bad option) raise ``sofa.errors.UserError`` with a message that
  says what was expected and what was found; the command line prints it without a traceback.

This interface is stable: new hooks get defaults here so existing tasks keep working.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

__all__ = [
    "Task",
    "StepOutput",
    "EvalContext",
    "FinishedRun",
    "register_task",
    "get_task",
    "list_tasks",
    "unwrap",
    "to_device",
]


@dataclass
class StepOutput:
    """What ``Task.train_step`` returns.

    loss: scalar tensor to back-propagate (already averaged over the batch).
    logs: per-sample means to display/log (e.g. ``{"acc": 0.93}``); tensors or floats.
    num_samples: number of samples in this batch on this rank (weights the epoch averages).
    """

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1


@dataclass
class EvalContext:
    """Handed to ``Task.evaluate``: where to run and how to talk to the other ranks."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast: Callable[[], Any] | None = None  # a context-manager factory (the loop's mixed precision)
    progress: Callable[[Iterable, str], Iterable] | None = None  # wraps an iterable in a progress bar/log

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place, returned); identity without DDP."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """One picklable object per rank, in rank order; ``[obj]`` without DDP."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


@dataclass
class FinishedRun:
    """Handed to ``Task.after_training`` when the last epoch is done."""

    run_dir: Path
    best: dict[str, Any]  # {"metric", "value", "epoch", "which"}: the loop's best evaluation (value None if none)
    global_step: int  # optimiser steps taken, over all sessions of the run
    ctx: EvalContext
    #: ``loader(dataset, split)``: an evaluation DataLoader of ``dataset``, this rank's shard, the task's collate
    loader: Callable[[torch.utils.data.Dataset, str], Iterable]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors (recursively) to ``device``; 4-D floating tensors become channels-last if asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, channels_last) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


class Task:
    """Base class of a training task. See the module docstring for the contract."""

    #: registry name, as in ``sofa train --task NAME``
    name: str = ""
    #: key of ``evaluate``'s dict that selects the best checkpoint and is printed at the end
    primary_metric: str = "loss"
    higher_is_better: bool = False
    #: what the progress lines count per second ("img" for images, "seq" for sequence tasks); the metrics
    #: files keep the key ``images_per_s`` whatever the unit
    sample_unit: str = "img"
    #: default values for the loop's options when this task runs (e.g. ``{"img_size": 512, "epochs": 160}``);
    #: command line and config file still win
    defaults: dict[str, Any] = {}

    @classmethod
    def profile(cls, cfg: argparse.Namespace) -> dict[str, Any]:
        """Defaults that depend on options already known (``cfg.data``, ``cfg.model``): e.g. the digits profile
        of classification. Below the command line, config file and resumed config; above ``defaults``."""
        return {}

    def __init__(self, cfg: argparse.Namespace, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self._log = log or print

    def log(self, msg: str) -> None:
        """A line for the user (printed by rank 0 only, and written to the run's log)."""
        self._log(msg)

    @classmethod
    def run_instead(cls, cfg: argparse.Namespace, callbacks: Iterable[Any] = ()) -> int | None:
        """A task that runs several trainings for one command (``--task glue --glue-task all``) runs them here
        and returns the exit code; None (the default) lets ``sofa train`` run ``cfg`` as one run."""
        return None

    # ---------------------------------------------------------------- command line
    @classmethod
    def add_args(cls, parser: argparse._ActionsContainer) -> None:
        """Add task-specific options (``parser`` is an argument group)."""

    # ---------------------------------------------------------------- data
    def build_datasets(self) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        """(train, validation) datasets; validation may be None (then no evaluation during training)."""
        raise NotImplementedError

    def build_eval_dataset(self) -> torch.utils.data.Dataset:
        """The dataset ``sofa eval`` measures. Default: the validation dataset of ``build_datasets``."""
        _, val = self.build_datasets()
        if val is None:
            from sofa.errors import UserError

            raise UserError(f"task {self.name!r} has no evaluation dataset for data {self.cfg.data!r}")
        return val

    def collate_fn(self, split: str) -> Callable | None:
        """DataLoader collate function for ``split`` in {"train", "val"}; None = default collate."""
        return None

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return to_device(batch, device, bool(getattr(self.cfg, "channels_last", False)))

    def data_summary(self, n_train: int, n_val: int) -> str:
        """How the run's header names the data's size: images and their side by default; sequence tasks name
        their samples and length instead."""
        return f"{n_train} train / {n_val} val images, {self.cfg.img_size}px"

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        """The model, on the CPU, in fp32; the loop moves, wraps and compiles it."""
        raise NotImplementedError

    # ---------------------------------------------------------------- steps
    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Forward one training batch (already on the device), return loss and logs."""
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Forward one evaluation batch; return *sums* over the batch (e.g. correct count, loss sum, count)."""
        raise NotImplementedError

    def finalize_eval(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Turn the summed ``eval_step`` outputs (over all batches and ranks) into metrics."""
        raise NotImplementedError

    def eval_outputs(
        self, model: nn.Module, loader: Iterable, ctx: EvalContext, step: Callable[[nn.Module, Any], Any]
    ) -> Iterator[tuple[Any, Any]]:
        """``(batch, step(model, batch))`` for each batch of ``loader`` moved to the device, ``step`` run in eval
        mode without gradients and under the run's autocast, with the progress bar."""
        model.eval()
        it = ctx.progress(loader, "eval") if ctx.progress else loader
        for batch in it:
            batch = self.to_device(batch, ctx.device)
            with torch.no_grad(), ctx.autocast() if ctx.autocast is not None else contextlib.nullcontext():
                out = step(model, batch)
            yield batch, out

    def evaluate(self, model: nn.Module, loader: Iterable, ctx: EvalContext) -> dict[str, float]:
        """Metrics of ``model`` on ``loader`` (this rank's shard); the same dict on every rank."""
        sums: dict[str, torch.Tensor] = {}
        for _, out in self.eval_outputs(model, loader, ctx, self.eval_step):
            for k, v in out.items():
                v = torch.as_tensor(v, dtype=torch.float64).detach().to("cpu", torch.float64)
                sums[k] = sums[k] + v if k in sums else v.clone()
        keys = sorted(sums)
        if keys:
            flat = torch.cat([sums[k].reshape(-1) for k in keys]).to(ctx.device)
            # every rank must contribute the same keys/shapes; a rank with an empty shard sends zeros
            flat = ctx.all_reduce_sum(flat).cpu()
            offset = 0
            for k in keys:
                n = sums[k].numel()
                sums[k] = flat[offset : offset + n].reshape(sums[k].shape)
                offset += n
        return self.finalize_eval(sums)

    # ---------------------------------------------------------------- end of training
    def after_training(self, model: nn.Module, run: FinishedRun) -> dict[str, str]:
        """Called on every rank after the last epoch (see the module docstring); ``model`` holds the final
        weights and may be changed. Returns ``{file name: what it holds}`` of files written into the run."""
        return {}

    # ---------------------------------------------------------------- checkpoint extras
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def checkpoint_metadata(self) -> dict[str, str]:
        """Strings stored with the weights (safetensors metadata)."""
        return {}


class TrainingClock:
    """Seconds of training summed over the sessions of one run: a task keeps one, saves it in its
    :meth:`Task.state_dict` and restores it on ``--resume``, so a resumed run reports its whole training time."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._seconds_before = 0.0  # the sessions before a --resume

    def seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {"training_seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seconds_before = float(state.get("training_seconds", 0.0))
        self._started = time.perf_counter()


_TASKS: dict[str, type[Task]] = {}


def register_task(name: str, cls: type[Task]) -> type[Task]:
    """Make ``cls`` available as ``sofa train --task name``. Returns ``cls`` (usable as a decorator helper)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task({name!r}, ...) expects a Task subclass, got {cls!r}")
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__module__}")
    cls.name = cls.name or name
    _TASKS[name] = cls
    return cls


# Modules that register tasks when imported; a missing one (area not installed) is skipped.
_TASK_MODULES = (
    "sofa.train.classification",
    "sofa.dense.tasks",
    "sofa.train.lra",
    "sofa.train.pretrain",
    "sofa.train.glue",
)


def _load_builtin_tasks() -> None:
    import importlib

    for mod in _TASK_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name is not None and mod.startswith(err.name):
                continue
            raise


def get_task(name: str) -> type[Task]:
    _load_builtin_tasks()
    try:
        return _TASKS[name]
    except KeyError:
        from sofa.errors import UserError

        raise UserError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS)) or 'none'}") from None


def list_tasks() -> list[str]:
    _load_builtin_tasks()
    return sorted(_TASKS)
