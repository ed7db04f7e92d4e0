"""The :class:`Trainer`: one run of ``sofa train`` on this rank, and the :class:`Callback` hooks into it.

Determinism: every training step seeds python ``random``, numpy and torch from ``(seed, epoch, step, rank)`` and
every training sample's augmentation is seeded from ``(seed, epoch, index)``, so a run resumed from any
checkpoint (epoch end or mid-epoch) replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sofa import checkpoint as ckpt
from sofa.data.sampling import EpochShardSampler, SeededDataset, ShardSampler, mix_seed, seed_everything
from sofa.errors import TrainingDiverged, UserError, writing
from sofa.train.config import config_to_dict
from sofa.train.distributed import Dist, agree_max, autocast_factory, resolve_amp
from sofa.train.reporting import MetricsLog, Reporter, epoch_line, fmt_value, yaml_text
from sofa.train.state import Best, EpochMeters, Progress, StepRequests, Stopped, TrainResult
from sofa.train.stopping import DataLoader, StopRequests, make_loader, signal_name
from sofa.train.task import EvalContext, FinishedRun, StepOutput, Task, get_task


class Callback:
    """Hooks into a run of :func:`train`, each called on every rank with the :class:`Trainer` (its ``progress``,
    ``model``, ``optimizer``, ``stop_requests``, ``dist`` ...). Override the hooks you need; the others do
    nothing."""

    def on_step_start(self, trainer: Trainer, batch: Any) -> None:
        """Before the forward pass of a training step; ``batch`` is on the device and may be changed in place."""

    def on_step_end(self, trainer: Trainer, global_step: int) -> None:
        """After optimiser step ``global_step`` (counted from 1 over the whole run), its metrics written and a
        checkpoint asked for at it saved; not after the step at which a stop signal ends the run."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch (not when a stop signal ended the run), before the task's ``after_training``."""


#: what the files of a run directory hold, as the end of a run lists them
RUN_FILES = {
    "best.safetensors": "best weights",
    "model.safetensors": "final weights",
    "last.pt": "training state (--resume)",
    "metrics.jsonl": "metrics per step/epoch",
    "curves.png": "loss, accuracy and learning-rate curves",
    "config.yaml": "the resolved options",
    "log.txt": "this log",
}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int):
    """timm's schedule ``cfg.sched`` over ``cfg.epochs`` epochs (the warm-up included), stepped every update.

    ``poly`` is the linear schedule of BERT and of the LRA harness: a linear warm-up to the peak, then a linear
    decay to ``min_lr`` over the remaining steps (timm's polynomial schedule with power 1, the warm-up as a
    prefix); timm's own default would be power 0.1, decaying from step 0."""
    from timm.scheduler import create_scheduler_v2

    poly = cfg.sched == "poly"
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs - cfg.warmup_epochs if poly else int(cfg.epochs),
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        decay_rate=1.0 if poly else 0.1,  # timm's one decay_rate: step's factor, poly's power
        warmup_prefix=poly,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


class Trainer:
    """One run of ``sofa train`` on this rank: :meth:`setup` builds the task, model, data, optimiser, schedule,
    scaler and EMA (and restores a resumed run's state); :meth:`fit` runs the epochs (:meth:`train_epoch`,
    :meth:`end_of_epoch`) and ends with :meth:`summary`, or with :meth:`stopped` when a signal stops it."""

    def __init__(
        self,
        cfg: argparse.Namespace,
        d: Dist,
        rep: Reporter,
        metrics: MetricsLog,
        run_dir: Path,
        callbacks: list[Callback],
    ):
        self.cfg, self.dist, self.rep, self.metrics, self.run_dir = cfg, d, rep, metrics, run_dir
        self.callbacks = callbacks
        self.progress = Progress()
        self.saved_at: Progress | None = None  # where the last.pt on disk stands (None: there is none yet)
        self.meters = EpochMeters()
        self.last_metrics: dict[str, Any] = {}
        self.files = dict(RUN_FILES)
        self.stop_requests = StopRequests()
        self.bar = None

    # ---------------------------------------------------------------- setup
    def setup(self, resume_state: dict[str, Any] | None) -> None:
        self._build()
        self._build_optimisation()
        if resume_state is not None:
            self._resume(resume_state)
        self._wrap_model()
        self._announce()

    def _build(self) -> None:
        """Seeds, device switches, the task, its model (on the device) and the data loaders."""
        cfg, d = self.cfg, self.dist
        torch.manual_seed(int(cfg.seed))  # model initialisation (also CUDA)
        seed_everything(int(cfg.seed))
        if d.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype = resolve_amp(cfg.amp, d.device)
        self.autocast = autocast_factory(d.device, self.amp_dtype)
        self.task: Task = get_task(cfg.task)(cfg, log=self.rep.log)
        self.model: nn.Module = self.task.build_model()
        self.train_ds, self.val_ds = self.task.build_datasets()
        if len(self.train_ds) == 0:
            raise UserError("the training dataset is empty")
        if cfg.grad_checkpointing:
            if hasattr(self.model, "set_grad_checkpointing"):
                self.model.set_grad_checkpointing(True)
            else:
                self.rep.log(
                    f"warning: {type(self.model).__name__} has no set_grad_checkpointing(); "
                    f"--grad-checkpointing ignored"
                )
        self.model.to(d.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

        self.batch_size = bs = int(cfg.batch_size)
        self.sampler = EpochShardSampler(len(self.train_ds), d.rank, d.world_size, shuffle=True, seed=int(cfg.seed))
        self.train_loader = make_loader(
            SeededDataset(self.train_ds, int(cfg.seed)),
            bs,
            self.sampler,
            int(cfg.workers),
            self.task.collate_fn("train"),
            self.sampler.per_rank >= bs,
            d.device,
        )
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"no training step fits: {len(self.train_ds)} samples, batch size {bs}, {d.world_size} process(es)"
            )
        has_val = self.val_ds is not None and len(self.val_ds) > 0
        self.val_loader = self.eval_loader(self.val_ds, "val") if has_val else None

    def eval_loader(self, dataset: torch.utils.data.Dataset, split: str) -> DataLoader:
        """An evaluation loader of ``dataset``: this rank's shard, in order, the task's collate for ``split``."""
        d = self.dist
        return make_loader(
            dataset,
            self.batch_size,
            ShardSampler(len(dataset), d.rank, d.world_size),
            int(self.cfg.workers),
            self.task.collate_fn(split),
            False,
            d.device,
        )

    def _build_optimisation(self) -> None:
        """timm's optimiser and schedule, a gradient scaler for fp16, the EMA of the weights."""
        from timm.optim import create_optimizer_v2
        from timm.utils import ModelEmaV3

        cfg = self.cfg
        opt_kw: dict[str, Any] = {}
        if cfg.opt.lower() in ("sgd", "nesterov", "momentum", "rmsprop", "rmsproptf", "lars", "lamb"):
            opt_kw["momentum"] = cfg.momentum
        self.optimizer = create_optimizer_v2(
            self.model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kw
        )
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        device = self.dist.device
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler) if use_scaler else None
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, device=device) if cfg.ema else None
        self.best = Best(self.task.primary_metric)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _resume(self, state: dict[str, Any]) -> None:
        """Restore a saved training state (``last.pt``): weights, optimiser, schedule, scaler, EMA, task,
        progress, best, the epoch's meters, the random generators."""
        cfg, rep = self.cfg, self.rep
        ckpt.load_model_weights(self.model, state["model"], str(self.run_dir / "last.pt"))
        self.optimizer.load_state_dict(state["optimizer"])
        saved_epochs = (state.get("config") or {}).get("epochs")
        if saved_epochs is not None and int(saved_epochs) != int(cfg.epochs):
            # timm's schedulers keep only their settings: rebuilt for the new length, nothing to restore
            rep.log(
                f"note: --epochs changed from {saved_epochs} to {cfg.epochs}: the schedule is recomputed "
                f"for {cfg.epochs} epochs"
            )
        else:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.task.load_state_dict(state.get("task") or {})
        self.progress = Progress(int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"]))
        self.saved_at = replace(self.progress)
        if state.get("best"):
            self.best = Best(**state["best"])
        if self.progress.step_in_epoch:
            self.meters = EpochMeters(dict(state.get("meters") or {}))
        ckpt.set_rng_state(state.get("rng") or {})
        self.metrics.truncate_after(self.progress.global_step)
        p = self.progress
        rep.log(
            f"resumed {self.run_dir} at epoch {p.epoch + 1}, step {p.step_in_epoch}/{self.steps_per_epoch} "
            f"(global step {p.global_step})"
        )

    def _wrap_model(self) -> None:
        """DDP and torch.compile around the model: ``train_model`` for the steps, ``eval_model`` to evaluate."""
        device = self.dist.device
        self.train_model: nn.Module = self.model
        if self.dist.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.eval_model = self.train_model if not self.cfg.compile else torch.compile(self.model)
        self.ctx = EvalContext(
            device=device,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            autocast=self.autocast,
            progress=self.rep.progress,
        )

    def _announce(self) -> None:
        """config.yaml, and the run's header lines (for a new run) and warnings."""
        cfg, d, rep, run_dir = self.cfg, self.dist, self.rep, self.run_dir
        if d.is_main:
            with writing(run_dir / "config.yaml"):
                ckpt.atomic_write_text(run_dir / "config.yaml", yaml_text(config_to_dict(cfg)))
        if self.progress == Progress():
            n_params = sum(p.numel() for p in self.model.parameters())
            data_name = "digits (scikit-learn, bundled)" if str(cfg.data) == "digits" else str(cfg.data)
            n_val = len(self.val_ds) if self.val_ds is not None else 0
            amp = f", {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else ""
            rep.log(
                f"sofa train: task {self.task.name}, model {cfg.model} ({n_params / 1e6:.2f}M parameters), "
                f"data {data_name}: {self.task.data_summary(len(self.train_ds), n_val)}, "
                f"{d.world_size} process(es) on {d.device}{amp}"
            )
            rep.log(
                f"  {cfg.epochs} epochs × {self.steps_per_epoch} steps of {self.batch_size}"
                f"{f'×{d.world_size}' if d.distributed else ''}, {cfg.opt} lr {cfg.lr:g} "
                f"wd {cfg.weight_decay:g}, {cfg.sched} schedule, warm-up {cfg.warmup_epochs:g} epoch(s); "
                f"writing to {run_dir}/"
            )
        warning = warmup_warning(cfg)
        if warning:
            rep.log(warning)

    # ---------------------------------------------------------------- the run
    def fit(self) -> TrainResult:
        """Train from ``progress`` to the last epoch; a stop signal ends the run after saving where it stands."""
        if self.progress.epoch >= int(self.cfg.epochs):
            self.rep.log(
                f"nothing to train: {self.run_dir} has run its {self.cfg.epochs} epoch(s) already "
                f"(a larger --epochs goes on)"
            )
        with self.stop_requests:
            for _ in range(self.progress.epoch, int(self.cfg.epochs)):
                stop = self.train_epoch()
                if stop is None:
                    stop = self.end_of_epoch()
                if stop is not None:
                    return self.stopped(stop)
        for callback in self.callbacks:
            callback.on_train_end(self)
        self.after_training()
        return self.summary()

    def train_epoch(self) -> Stopped | None:
        """The steps of epoch ``progress.epoch`` from ``progress.step_in_epoch`` on; a :class:`Stopped` when a
        stop signal ends the run mid-epoch."""
        p = self.progress
        self.sampler.set_epoch(p.epoch, start=p.step_in_epoch * self.batch_size)
        self.train_model.train()
        self.meters = EpochMeters(self.meters.sums if p.step_in_epoch else {})
        self.bar = self.rep.bar(self.steps_per_epoch, p.step_in_epoch, f"epoch {p.epoch + 1}/{self.cfg.epochs}")
        try:
            for batch in self.train_loader:
                stop = self.train_step(batch)
                if stop is not None:
                    return stop
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return None

    def train_step(self, batch: Any) -> Stopped | None:
        """Forward, agree with the other ranks (a non-finite loss ends the run), step, record, and save or stop
        where asked."""
        cfg, d, p = self.cfg, self.dist, self.progress
        seed_everything(mix_seed(int(cfg.seed), p.epoch, p.step_in_epoch, d.rank, 0x57E9), cuda=d.device.type == "cuda")
        batch = self.task.to_device(batch, d.device)
        for callback in self.callbacks:
            callback.on_step_start(self, batch)
        with self.autocast():
            out = self.task.train_step(self.train_model, batch)
        requests = StepRequests.agree(d, out.loss, self.stop_requests)
        if requests.loss_not_finite:
            raise self.diverged(out.loss)
        self.optimizer_step(out.loss)
        p.step_in_epoch += 1
        self.record_step(out)
        stop = self.answer(requests)
        if stop is None:
            for callback in self.callbacks:
                callback.on_step_end(self, p.global_step)
        return stop

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward (scaled for fp16), clip, step the optimiser, the schedule and the EMA."""
        from timm.utils import dispatch_clip_grad

        cfg, optimizer = self.cfg, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if cfg.clip_grad:
                self.scaler.unscale_(optimizer)
                dispatch_clip_grad(self.params, cfg.clip_grad, mode=cfg.clip_mode)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if cfg.clip_grad:
                dispatch_clip_grad(self.params, cfg.clip_grad, mode=cfg.clip_mode)
            optimizer.step()
        self.progress.global_step += 1
        self.scheduler.step_update(num_updates=self.progress.global_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.progress.global_step)

    def record_step(self, out: StepOutput) -> None:
        """The step into the epoch's meters, the progress bar, metrics.jsonl and (every --log-interval) a line."""
        cfg, p = self.cfg, self.progress
        loss = float(out.loss.detach())
        self.meters.add(int(out.num_samples), loss, out.logs)
        lr = self.optimizer.param_groups[0]["lr"]
        ips = self.meters.images_per_s(self.dist.world_size)
        avg = self.meters.averages()
        if self.bar is not None:
            self.bar.set_postfix(
                {
                    **{k: fmt_value(v) for k, v in avg.items()},
                    "lr": f"{lr:.2e}",
                    f"{self.task.sample_unit}/s": f"{ips:.0f}",
                },
                refresh=False,
            )
            self.bar.update(1)
        interval = int(cfg.log_interval or 0)
        if interval and p.global_step % interval == 0:
            self.metrics.write(
                {
                    "type": "step",
                    "epoch": p.epoch + p.step_in_epoch / self.steps_per_epoch,
                    "global_step": p.global_step,
                    "lr": lr,
                    "loss": loss,
                    "images_per_s": ips,
                    **{k: float(v) for k, v in out.logs.items()},
                }
            )
            if self.bar is None and self.steps_per_epoch > 2 * interval:  # short epochs: one line each
                self.rep.log(
                    f"epoch {p.epoch + 1}/{cfg.epochs} step {p.step_in_epoch}/{self.steps_per_epoch}  "
                    + "  ".join(f"{k} {fmt_value(v)}" for k, v in avg.items())
                    + f"  lr {lr:.3g}  {ips:.0f} {self.task.sample_unit}/s"
                )

    def answer(self, requests: StepRequests) -> Stopped | None:
        """Mid-epoch: save last.pt when asked (SIGUSR1, a stop signal, every --save-every-steps), and stop on a
        stop signal. At the end of an epoch :meth:`end_of_epoch` does both."""
        p = self.progress
        if p.step_in_epoch >= self.steps_per_epoch:
            return None
        every = int(self.cfg.save_every_steps or 0)
        if requests.save or requests.stop_signal or (every and p.global_step % every == 0):
            self.save_state()
            if requests.save:
                self.rep.log(
                    f"saved {self.run_dir / 'last.pt'} (on request) at epoch {p.epoch + 1}, step {p.step_in_epoch}"
                )
            self.stop_requests.save = False
        if requests.stop_signal:
            where = f"at epoch {p.epoch + 1}, step {p.step_in_epoch}/{self.steps_per_epoch}"
            return Stopped(requests.stop_signal, where)
        return None

    def diverged(self, loss: torch.Tensor) -> TrainingDiverged:
        """The error that ends a run whose loss is not finite, naming the step and the last good checkpoint."""
        p, saved, run_dir = self.progress, self.saved_at, self.run_dir
        if saved is None:
            where = "none yet (this happened before the first save)"
        else:
            at = (
                f"after epoch {saved.epoch}"
                if not saved.step_in_epoch
                else f"epoch {saved.epoch + 1}, step {saved.step_in_epoch}"
            )
            where = f"{run_dir / 'last.pt'} ({at}), kept: continue with --resume {run_dir} after a change"
        lr = self.optimizer.param_groups[0]["lr"]
        return TrainingDiverged(
            f"loss is {loss.item()} at epoch {p.epoch + 1}, step {p.step_in_epoch + 1} (global step "
            f"{p.global_step + 1}); training stopped and nothing was saved from this step. Last good checkpoint: "
            f"{where}. Hints: lower --lr (now {lr:.3g}), lengthen --warmup-epochs, set --clip-grad 1.0, "
            f"use --amp bf16 or none instead of fp16, check the data for bad values."
        )

    def end_of_epoch(self) -> Stopped | None:
        """Evaluate (every --eval-every epochs and after the last), record, save the weights and last.pt; a
        stop signal that came meanwhile ends the run here."""
        cfg, d = self.cfg, self.dist
        epoch_time = self.meters.elapsed()
        epoch = self.progress.epoch + 1  # the epoch just done, counted from 1
        self.scheduler.step(epoch)
        rec: dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch,
            "global_step": self.progress.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_time,
            "images_per_s": self.meters.samples * d.world_size / max(epoch_time, 1e-9),
        }
        rec.update({f"train_{k}": v for k, v in self.meters.averages().items()})
        candidates = self.evaluate(epoch, rec)
        self.metrics.write(rec)
        self.last_metrics = rec
        improved = self.best.consider(candidates, epoch, self.task.higher_is_better)
        self.rep.log(epoch_line(rec, int(cfg.epochs), self.task.primary_metric, self.task.sample_unit))
        self.progress = Progress(epoch, 0, self.progress.global_step)
        self.meters = EpochMeters()
        if d.is_main:
            self.save_epoch(rec, improved)
        d.barrier()
        stop_signal = agree_max(d, self.stop_requests.stop_signal or 0)
        if stop_signal and epoch < int(cfg.epochs):
            return Stopped(stop_signal, f"after epoch {epoch}")
        return None

    def evaluate(self, epoch: int, rec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The model's (and the EMA's) metrics where this epoch evaluates, added to ``rec``;
        ``[(which, metrics)]``."""
        is_last = epoch == int(self.cfg.epochs)
        if self.val_loader is None or not (is_last or epoch % max(int(self.cfg.eval_every), 1) == 0):
            return []
        m = self.task.evaluate(self.eval_model, self.val_loader, self.ctx)
        rec.update({f"val_{k}": v for k, v in m.items()})
        candidates = [("model", m)]
        if self.ema is not None:
            me = self.task.evaluate(self.ema.module, self.val_loader, self.ctx)
            rec.update({f"ema_val_{k}": v for k, v in me.items()})
            candidates.append(("ema", me))
        return candidates

    def save_epoch(self, rec: dict[str, Any], improved: str | None) -> None:
        """Rank 0's files at the end of an epoch: the weights (EMA, best where it improved), last.pt, the
        curves."""
        cfg, task, best, run_dir = self.cfg, self.task, self.best, self.run_dir
        evaluated = {k: v for k, v in rec.items() if k.startswith(("val_", "ema_val_"))}
        meta = build_metadata(task, cfg, {"epoch": rec["epoch"], "metrics": evaluated})
        self.save_weights("model.safetensors", self.model, meta)
        if self.ema is not None:
            self.save_weights("model_ema.safetensors", self.ema.module, dict(meta, ema=True))
            self.files["model_ema.safetensors"] = "EMA weights"
        if improved is not None:
            src = self.ema.module if improved == "ema" else self.model
            self.save_weights("best.safetensors", src, dict(meta, best=asdict(best)))
            self.files["best.safetensors"] = (
                f"best weights ({task.primary_metric} {best.value:.4g}, epoch "
                f"{best.epoch}{', EMA' if improved == 'ema' else ''})"
            )
        self.save_state()
        try:
            from sofa.train.plot import plot_metrics

            plot_metrics(
                self.metrics.read(), run_dir / "curves.png", title=f"{cfg.model} on {Path(str(cfg.data)).name}"
            )
        except Exception as err:  # a plot is never worth a crash
            self.rep.log(f"warning: could not draw curves.png: {err}")

    def save_weights(self, name: str, model: nn.Module, meta: dict[str, Any]) -> None:
        with writing(self.run_dir / name):
            ckpt.save_weights(self.run_dir / name, model.state_dict(), meta)

    def save_state(self) -> None:
        """last.pt (rank 0 writes it): everything a resume needs to go on from ``progress`` exactly."""
        self.saved_at = replace(self.progress)
        if not self.dist.is_main:
            return
        p, ema, scaler, task = self.progress, self.ema, self.scaler, self.task
        state = {
            "format": ckpt.STATE_FORMAT,
            "version": ckpt.STATE_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": ({k: v.detach().cpu() for k, v in ema.state_dict().items()} if ema is not None else None),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": p.epoch,
            "step_in_epoch": p.step_in_epoch,
            "global_step": p.global_step,
            "best": asdict(self.best),
            "meters": dict(self.meters.sums),
            "rng": ckpt.rng_state(),
            "config": config_to_dict(self.cfg),
            "task": task.state_dict(),
            "metadata": build_metadata(task, self.cfg),
        }
        with writing(self.run_dir / "last.pt"):
            ckpt.atomic_torch_save(state, self.run_dir / "last.pt")

    # ---------------------------------------------------------------- the end
    def after_training(self) -> None:
        """The task's ``after_training`` hook (e.g. scoring the best weights on a test split); the files it
        wrote join the list of the run's files."""
        run = FinishedRun(self.run_dir, asdict(self.best), self.progress.global_step, self.ctx, self.eval_loader)
        self.files.update(self.task.after_training(self.model, run) or {})

    def stopped(self, stop: Stopped) -> TrainResult:
        run_dir = self.run_dir
        self.rep.log(
            f"stopped by {signal_name(stop.signal)} {stop.where} (global step {self.progress.global_step}), "
            f"saved {run_dir / 'last.pt'}; continue with: sofa train --resume {run_dir}"
        )
        return TrainResult(run_dir, self.best, self.last_metrics, self.files, stopped_by=stop.signal)

    def summary(self) -> TrainResult:
        """The closing lines: skipped images, the best and final metrics, the files written, what to run next."""
        rep, best, run_dir = self.rep, self.best, self.run_dir
        skipped = sum(getattr(ds, "num_skipped", 0) for ds in (self.train_ds, self.val_ds) if ds is not None)
        if skipped:
            rep.log(f"warning: {skipped} unreadable image(s) were skipped (see the warnings above)")
        if best.value is not None:
            final = ", ".join(
                f"{k[4:]} {fmt_value(v)}"
                for k, v in self.last_metrics.items()
                if k.startswith("val_") and k != "val_count"
            )
            rep.log(
                f"done: best {self.task.primary_metric} {best.value:.2f} at epoch {best.epoch}"
                f"{' (EMA)' if best.which == 'ema' else ''}; final {final}"
            )
        else:
            rep.log("done")
        rep.log(f"wrote {run_dir}/:")
        for name, what in self.files.items():
            if (run_dir / name).exists() or not self.dist.is_main:
                rep.log(f"  {name:<22} {what}")
        hint = f"evaluate: sofa eval {run_dir}"
        if self.task.name == "classification":  # sofa predict classifies images
            hint += f"    predict: sofa predict --checkpoint {run_dir} IMAGE..."
        rep.log(hint)
        return TrainResult(run_dir, best, self.last_metrics, self.files)


def build_metadata(task: Task, cfg: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"model": cfg.model, "task": task.name, "img_size": cfg.img_size}
    meta.update(task.checkpoint_metadata())
    meta["config"] = config_to_dict(cfg)
    if extra:
        meta.update(extra)
    return meta


def warmup_warning(cfg: argparse.Namespace) -> str | None:
    """The warning for a run too short to leave its warm-up: its learning rate never reaches --lr."""
    warmup, epochs = float(cfg.warmup_epochs or 0), int(cfg.epochs)
    if warmup <= 0 or epochs > warmup:
        return None
    return (
        f"warning: --epochs {epochs} is not longer than --warmup-epochs {warmup:g}: the learning rate is still "
        f"warming up when the run ends and never reaches its peak --lr {cfg.lr:g} nor the {cfg.sched} decay; "
        f"lengthen --epochs or shorten --warmup-epochs"
    )


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj
