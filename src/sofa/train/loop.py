"""The task-generic training loop and the evaluation run behind ``sofa train`` and ``sofa eval``.

One process per device; under ``torchrun`` the processes form a DDP group (NCCL on GPUs, gloo on the CPU), each
reads its shard of the data and only rank 0 writes files or prints. Determinism: every training step seeds python
``random``, numpy and torch from ``(seed, epoch, step, rank)`` and every training sample's augmentation is seeded
from ``(seed, epoch, index)``, so a run resumed from any checkpoint (epoch end or mid-epoch) replays exactly what
the uninterrupted run would have done.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from sofa.data.sampling import EpochShardSampler, SeededDataset, ShardSampler, mix_seed, seed_everything
from sofa.train import checkpoint as ckpt
from sofa.train.config import config_to_dict
from sofa.train.errors import TrainingDiverged, UserError
from sofa.train.task import EvalContext, FinishedRun, Task, get_task, unwrap


# ------------------------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device_opt: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device_opt = device_opt or "auto"
    if device_opt == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_opt)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {device_opt}: no CUDA device is available (use --device cpu)")
            if device.index is None:
                device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    d = Dist(rank, world, local, device)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        d.initialised_here = True
    return d


def teardown_distributed(d: Dist) -> None:
    if d.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ output
class Reporter:
    """Rank 0's voice: lines to stdout and RUN/log.txt, a tqdm bar on a terminal, metrics.jsonl, the plot."""

    def __init__(self, is_main: bool, mode: str = "auto", run_dir: Path | None = None):
        self.is_main = is_main
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.run_dir = run_dir
        self._log_file = None
        if is_main and run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(run_dir / "log.txt", "a", buffering=1)

    def log(self, msg: str) -> None:
        if not self.is_main:
            return
        if self.mode == "bar":
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)
        elif self.mode != "none" or msg.startswith(("error", "warning")):
            print(msg, flush=True)
        if self._log_file is not None:
            self._log_file.write(msg + "\n")

    def bar(self, total: int, initial: int, desc: str):
        if not self.is_main or self.mode != "bar":
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr)

    def progress(self, it: Iterable, desc: str) -> Iterable:
        bar = self.bar(len(it) if hasattr(it, "__len__") else None, 0, desc)  # type: ignore[arg-type]
        if bar is None:
            yield from it
            return
        try:
            for x in it:
                yield x
                bar.update(1)
        finally:
            bar.close()

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, ``"type": "step"`` (every log interval) or ``"epoch"``."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, global_step: int) -> None:
        """Drop records of steps after ``global_step`` (written by a run that was killed, then resumed)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if rec.get("global_step", 0) <= global_step:
                keep.append(json.dumps(rec))
        ckpt.atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


# ------------------------------------------------------------------------------------------------ helpers
def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    amp = amp or "auto"
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if amp == "fp16":
        if device.type == "cpu":
            raise UserError("--amp fp16 is for GPUs; on the CPU use --amp bf16 (or none)")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    raise UserError(f"--amp must be auto, none, bf16 or fp16, got {amp!r}")


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def default_run_dir(cfg: argparse.Namespace) -> Path:
    data = str(cfg.data or "digits")
    data = "digits" if data == "digits" else (Path(data).name or "data")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-{data}-{stamp}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _debug_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v else None


def make_loader(dataset, batch_size: int, sampler=None, workers: int = 0, collate_fn=None, drop_last=False,
                device: torch.device | None = None):
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(persistent_workers=False, prefetch_factor=2)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        drop_last=drop_last, pin_memory=bool(device is not None and device.type == "cuda"), **kw,
    )


def build_metadata(task: Task, cfg: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"model": cfg.model, "task": task.name, "img_size": cfg.img_size}
    meta.update(task.checkpoint_metadata())
    meta["config"] = config_to_dict(cfg)
    if extra:
        meta.update(extra)
    return meta


# ------------------------------------------------------------------------------------------------ train
@dataclass
class TrainResult:
    run_dir: Path
    best: dict[str, Any]
    last_metrics: dict[str, Any]
    files: dict[str, str]


class _Signals:
    """SIGUSR1: save a checkpoint at the next step. SIGTERM: save and stop (preemption)."""

    def __init__(self):
        self.save = False
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig, fn in ((getattr(signal, "SIGUSR1", None), self._on_save), (signal.SIGTERM, self._on_stop)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, fn)
        return self

    def _on_save(self, *_):
        self.save = True

    def _on_stop(self, *_):
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: argparse.Namespace) -> TrainResult:
    """Run ``cfg`` (fully resolved options, see ``sofa.train.config``). Returns where things were written."""
    d = setup_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, d)
    finally:
        torch.set_num_threads(threads)
        teardown_distributed(d)


def _train(cfg: argparse.Namespace, d: Dist) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    resume_state = None
    # ---- the run directory: decided by rank 0, shared with the others
    msg = None
    run_dir = None
    if d.is_main:
        try:
            if cfg.resume:
                run_dir = Path(cfg.resume)
                resume_state = ckpt.load_training_state(run_dir)
            else:
                run_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
                if (run_dir / "last.pt").exists():
                    raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                                    f"or choose another --output")
                run_dir.mkdir(parents=True, exist_ok=True)
        except UserError as err:
            msg = str(err)
    msg, run_dir = d.broadcast((msg, str(run_dir) if run_dir else None))
    if msg:
        raise UserError(msg)
    run_dir = Path(run_dir)
    if cfg.resume and not d.is_main:
        resume_state = ckpt.load_training_state(run_dir)
    cfg.output = str(run_dir)

    rep = Reporter(d.is_main, cfg.progress, run_dir if d.is_main else None)
    metrics = MetricsLog(run_dir / "metrics.jsonl", d.is_main)
    try:
        return _train_inner(cfg, d, rep, metrics, run_dir, resume_state)
    finally:
        rep.close()


def _train_inner(cfg, d: Dist, rep: Reporter, metrics: MetricsLog, run_dir: Path, resume_state) -> TrainResult:
    device = d.device
    torch.manual_seed(int(cfg.seed))  # model initialisation (also CUDA)
    seed_everything(int(cfg.seed))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = resolve_amp(cfg.amp, device)
    autocast = autocast_factory(device, amp_dtype)

    task_cls = get_task(cfg.task)
    task = task_cls(cfg, log=rep.log)
    model = task.build_model()
    train_ds, val_ds = task.build_datasets()
    if len(train_ds) == 0:
        raise UserError("the training dataset is empty")
    if cfg.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            rep.log(f"warning: {type(model).__name__} has no set_grad_checkpointing(); --grad-checkpointing ignored")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())

    # ---- data
    bs = int(cfg.batch_size)
    sampler = EpochShardSampler(len(train_ds), d.rank, d.world_size, shuffle=True, seed=int(cfg.seed))
    drop_last = sampler.per_rank >= bs
    train_loader = make_loader(SeededDataset(train_ds, int(cfg.seed)), bs, sampler, int(cfg.workers),
                               task.collate_fn("train"), drop_last, device)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UserError(f"no training step fits: {len(train_ds)} samples, batch size {bs}, {d.world_size} process(es)")
    val_loader = None
    if val_ds is not None and len(val_ds) > 0:
        val_loader = make_loader(val_ds, bs, ShardSampler(len(val_ds), d.rank, d.world_size), int(cfg.workers),
                                 task.collate_fn("val"), False, device)

    # ---- optimiser, schedule, scaler, EMA (timm's pieces)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    opt_kw: dict[str, Any] = {}
    if cfg.opt.lower() in ("sgd", "nesterov", "momentum", "rmsprop", "rmsproptf", "lars", "lamb"):
        opt_kw["momentum"] = cfg.momentum
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kw)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=int(cfg.epochs), warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    use_scaler = amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler) if use_scaler else None
    ema = ModelEmaV3(model, decay=cfg.ema_decay, device=device) if cfg.ema else None

    # ---- resume
    start_epoch, start_step, global_step = 0, 0, 0
    best: dict[str, Any] = {"metric": task.primary_metric, "value": None, "epoch": None, "which": None}
    meters_init: dict[str, float] = {}
    if resume_state is not None:
        ckpt.load_model_weights(model, resume_state["model"], str(run_dir / "last.pt"))
        optimizer.load_state_dict(resume_state["optimizer"])
        saved_epochs = (resume_state.get("config") or {}).get("epochs")
        if saved_epochs is not None and int(saved_epochs) != int(cfg.epochs):
            # timm's schedulers keep only their settings: rebuilt above for the new length, nothing to restore
            rep.log(f"note: --epochs changed from {saved_epochs} to {cfg.epochs}: the schedule is recomputed "
                    f"for {cfg.epochs} epochs")
        else:
            scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])
        task.load_state_dict(resume_state.get("task") or {})
        start_epoch = int(resume_state["epoch"])
        start_step = int(resume_state["step_in_epoch"])
        global_step = int(resume_state["global_step"])
        best = dict(resume_state.get("best") or best)
        meters_init = dict(resume_state.get("meters") or {})
        ckpt.set_rng_state(resume_state.get("rng") or {})
        metrics.truncate_after(global_step)
        rep.log(f"resumed {run_dir} at epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch} "
                f"(global step {global_step})")

    train_model: nn.Module = model
    if d.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    eval_model = train_model if not cfg.compile else torch.compile(model)

    ctx = EvalContext(device=device, rank=d.rank, world_size=d.world_size, autocast=autocast,
                      progress=rep.progress)

    if d.is_main:
        ckpt.atomic_write_text(run_dir / "config.yaml", _yaml(config_to_dict(cfg)))
    data_name = "digits (scikit-learn, bundled)" if str(cfg.data) == "digits" else str(cfg.data)
    if start_epoch == 0 and start_step == 0:
        rep.log(
            f"sofa train: task {task.name}, model {cfg.model} ({n_params / 1e6:.2f}M parameters), data {data_name}: "
            f"{len(train_ds)} train / {len(val_ds) if val_ds is not None else 0} val images, "
            f"{cfg.img_size}px, {d.world_size} process(es) on {device}"
            f"{', ' + str(amp_dtype).replace('torch.', '') if amp_dtype else ''}"
        )
        rep.log(f"  {cfg.epochs} epochs × {steps_per_epoch} steps of {bs}"
                f"{f'×{d.world_size}' if d.distributed else ''}, {cfg.opt} lr {cfg.lr:g} wd {cfg.weight_decay:g}, "
                f"{cfg.sched} schedule, warm-up {cfg.warmup_epochs:g} epoch(s); writing to {run_dir}/")

    debug_kill = _debug_int("SOFA_DEBUG_KILL_AT_STEP")
    debug_nan = _debug_int("SOFA_DEBUG_NAN_AT_STEP")
    # test hooks: "2:USR1,3:TERM" sends those signals to this process after those global steps
    debug_signals = {int(k): v for k, v in (x.split(":") for x in os.environ.get("SOFA_DEBUG_SIGNAL_AT_STEP", "").split(",") if x)}
    files = {
        "best.safetensors": "best weights",
        "model.safetensors": "final weights",
        "last.pt": "training state (--resume)",
        "metrics.jsonl": "metrics per step/epoch",
        "curves.png": "loss, accuracy and learning-rate curves",
        "config.yaml": "the resolved options",
        "log.txt": "this log",
    }
    last_saved: dict[str, Any] = {"epoch": None, "step": None} if resume_state is None else {
        "epoch": start_epoch, "step": start_step}

    def save_state(epoch: int, step_in_epoch: int, meters: dict[str, float]) -> None:
        if not d.is_main:
            return
        state = {
            "format": ckpt.STATE_FORMAT,
            "version": ckpt.STATE_VERSION,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema": ({k: v.detach().cpu() for k, v in ema.state_dict().items()} if ema is not None else None),
            "optimizer": _to_cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "best": best,
            "meters": dict(meters),
            "rng": ckpt.rng_state(),
            "config": config_to_dict(cfg),
            "task": task.state_dict(),
            "metadata": build_metadata(task, cfg),
        }
        ckpt.atomic_torch_save(state, run_dir / "last.pt")
        last_saved.update(epoch=epoch, step=step_in_epoch)

    last_metrics: dict[str, Any] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    with _Signals() as sig:
        for epoch in range(start_epoch, int(cfg.epochs)):
            first = start_step if epoch == start_epoch else 0
            meters = dict(meters_init) if (epoch == start_epoch and first) else {}
            sampler.set_epoch(epoch, start=first * bs)
            train_model.train()
            t0 = time.perf_counter()
            seen_this_session = 0
            bar = rep.bar(steps_per_epoch, first, f"epoch {epoch + 1}/{cfg.epochs}")
            step = first
            for step, batch in enumerate(train_loader, start=first):
                seed_everything(mix_seed(int(cfg.seed), epoch, step, d.rank, 0x57E9), cuda=device.type == "cuda")
                batch = task.to_device(batch, device)
                with autocast():
                    out = task.train_step(train_model, batch)
                loss = out.loss
                if debug_nan is not None and global_step + 1 == debug_nan:
                    loss = loss * float("nan")
                flags = torch.tensor([0.0 if torch.isfinite(loss.detach()).item() else 1.0,
                                      float(sig.save), float(sig.stop)])
                if d.distributed:  # NCCL reduces device tensors only
                    flags = flags.to(device)
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                    flags = flags.cpu()
                if flags[0] > 0:
                    if bar is not None:
                        bar.close()
                    if last_saved["epoch"] is None:
                        where = "none yet (this happened before the first save)"
                    else:
                        at = (f"after epoch {last_saved['epoch']}" if not last_saved["step"] else
                              f"epoch {last_saved['epoch'] + 1}, step {last_saved['step']}")
                        where = f"{run_dir / 'last.pt'} ({at}), kept: continue with --resume {run_dir} after a change"
                    lr_now = optimizer.param_groups[0]["lr"]
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} (global step {global_step + 1}); "
                        f"training stopped and nothing was saved from this step. Last good checkpoint: {where}. "
                        f"Hints: lower --lr (now {lr_now:.3g}), lengthen --warmup-epochs, set --clip-grad 1.0, "
                        f"use --amp bf16 or none instead of fp16, check the data for bad values."
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        dispatch_clip_grad(params, cfg.clip_grad, mode=cfg.clip_mode)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if cfg.clip_grad:
                        dispatch_clip_grad(params, cfg.clip_grad, mode=cfg.clip_mode)
                    optimizer.step()
                global_step += 1
                scheduler.step_update(num_updates=global_step)
                if ema is not None:
                    ema.update(model, step=global_step)

                n = int(out.num_samples)
                seen_this_session += n
                meters["count"] = meters.get("count", 0.0) + n
                meters["loss"] = meters.get("loss", 0.0) + float(loss.detach()) * n
                for k, v in out.logs.items():
                    meters[k] = meters.get(k, 0.0) + float(v) * n
                lr = optimizer.param_groups[0]["lr"]
                elapsed = time.perf_counter() - t0
                ips = seen_this_session * d.world_size / max(elapsed, 1e-9)
                avg = {k: meters[k] / meters["count"] for k in meters if k != "count"}
                if bar is not None:
                    bar.set_postfix({**{k: _fmt(v) for k, v in avg.items()}, "lr": f"{lr:.2e}", "img/s": f"{ips:.0f}"},
                                    refresh=False)
                    bar.update(1)
                if cfg.log_interval and global_step % int(cfg.log_interval) == 0:
                    rec = {"type": "step", "epoch": epoch + (step + 1) / steps_per_epoch, "global_step": global_step,
                           "lr": lr, "loss": float(loss.detach()), "images_per_s": ips,
                           **{k: float(v) for k, v in out.logs.items()}}
                    metrics.write(rec)
                    if bar is None and steps_per_epoch > 2 * int(cfg.log_interval):  # short epochs: one line each
                        rep.log(f"epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps_per_epoch}  "
                                + "  ".join(f"{k} {_fmt(v)}" for k, v in avg.items())
                                + f"  lr {lr:.3g}  {ips:.0f} img/s")
                done_in_epoch = step + 1
                if done_in_epoch < steps_per_epoch and (
                    flags[1] > 0 or flags[2] > 0
                    or (cfg.save_every_steps and global_step % int(cfg.save_every_steps) == 0)
                ):
                    save_state(epoch, done_in_epoch, meters)
                    if flags[1] > 0:
                        rep.log(f"saved {run_dir / 'last.pt'} (on request) at epoch {epoch + 1}, step {done_in_epoch}")
                    sig.save = False
                if flags[2] > 0 and done_in_epoch < steps_per_epoch:
                    rep.log(f"stopped on SIGTERM; continue with: sofa train --resume {run_dir}")
                    return TrainResult(run_dir, best, last_metrics, files)
                if debug_kill is not None and global_step == debug_kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                if global_step in debug_signals:
                    os.kill(os.getpid(), getattr(signal, "SIG" + debug_signals[global_step]))
            if bar is not None:
                bar.close()
            epoch_time = time.perf_counter() - t0
            scheduler.step(epoch + 1)

            # ---- evaluate, record, save
            rec: dict[str, Any] = {"type": "epoch", "epoch": epoch + 1, "global_step": global_step,
                                   "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
                                   "images_per_s": seen_this_session * d.world_size / max(epoch_time, 1e-9)}
            cnt = max(meters.get("count", 0.0), 1.0)
            rec.update({f"train_{k}": v / cnt for k, v in meters.items() if k != "count"})
            is_last = epoch + 1 == int(cfg.epochs)
            candidates = []
            if val_loader is not None and (is_last or (epoch + 1) % max(int(cfg.eval_every), 1) == 0):
                m = task.evaluate(eval_model, val_loader, ctx)
                rec.update({f"val_{k}": v for k, v in m.items()})
                candidates.append(("model", m))
                if ema is not None:
                    me = task.evaluate(ema.module, val_loader, ctx)
                    rec.update({f"ema_val_{k}": v for k, v in me.items()})
                    candidates.append(("ema", me))
            metrics.write(rec)
            last_metrics = rec
            improved = None
            for which, m in candidates:
                v = m.get(task.primary_metric)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                if best["value"] is None or (v > best["value"] if task.higher_is_better else v < best["value"]):
                    best.update(value=float(v), epoch=epoch + 1, which=which)
                    improved = which
            rep.log(_epoch_line(rec, int(cfg.epochs), task.primary_metric))
            if sig.stop:
                rep.log("SIGTERM received: saving and stopping")
            if d.is_main:
                meta = build_metadata(task, cfg, {"epoch": epoch + 1, "metrics": {k: v for k, v in rec.items()
                                                                                    if k.startswith(("val_", "ema_val_"))}})
                ckpt.save_weights(run_dir / "model.safetensors", model.state_dict(), meta)
                if ema is not None:
                    ckpt.save_weights(run_dir / "model_ema.safetensors", ema.module.state_dict(), dict(meta, ema=True))
                    files["model_ema.safetensors"] = "EMA weights"
                if improved is not None:
                    src = ema.module if improved == "ema" else model
                    ckpt.save_weights(run_dir / "best.safetensors", src.state_dict(),
                                      dict(meta, best=dict(best)))
                    files["best.safetensors"] = f"best weights ({task.primary_metric} {best['value']:.4g}, epoch {best['epoch']}{', EMA' if improved == 'ema' else ''})"
                save_state(epoch + 1, 0, {})
                try:
                    from sofa.train.plot import plot_metrics

                    plot_metrics(metrics.read(), run_dir / "curves.png", title=f"{cfg.model} on {Path(str(cfg.data)).name}")
                except Exception as err:  # a plot is never worth a crash
                    rep.log(f"warning: could not draw curves.png: {err}")
            d.barrier()
            if sig.stop:
                rep.log(f"stopped on SIGTERM; continue with: sofa train --resume {run_dir}")
                return TrainResult(run_dir, best, last_metrics, files)

    dump = os.environ.get("SOFA_DEBUG_RANK_WEIGHTS")
    if dump:  # test hook: every rank writes its final weights, to check that the ranks agree
        ckpt.save_weights(Path(dump) / f"rank{d.rank}.safetensors", model.state_dict(), {"rank": d.rank})

    def eval_loader(ds, split):
        return make_loader(ds, bs, ShardSampler(len(ds), d.rank, d.world_size), int(cfg.workers),
                           task.collate_fn(split), False, device)

    files.update(task.after_training(model, FinishedRun(run_dir, dict(best), global_step, ctx, eval_loader)) or {})
    skipped = getattr(train_ds, "num_skipped", 0) + (getattr(val_ds, "num_skipped", 0) if val_ds is not None else 0)
    if skipped:
        rep.log(f"warning: {skipped} unreadable image(s) were skipped (see the warnings above)")
    if best["value"] is not None:
        rep.log(f"done: best {task.primary_metric} {best['value']:.2f} at epoch {best['epoch']}"
                f"{' (EMA)' if best.get('which') == 'ema' else ''}; final "
                + ", ".join(f"{k[4:]} {_fmt(v)}" for k, v in last_metrics.items()
                           if k.startswith("val_") and k != "val_count"))
    else:
        rep.log("done")
    rep.log(f"wrote {run_dir}/:")
    for name, what in files.items():
        if (run_dir / name).exists() or not d.is_main:
            rep.log(f"  {name:<22} {what}")
    rep.log(f"evaluate: sofa eval {run_dir}    predict: sofa predict --checkpoint {run_dir} IMAGE...")
    return TrainResult(run_dir, best, last_metrics, files)


def _epoch_line(rec: dict[str, Any], epochs: int, primary: str) -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}"]
    tr = [f"{k[6:]} {_fmt(v)}" for k, v in rec.items() if k.startswith("train_")]
    if tr:
        parts.append("train " + " ".join(tr))
    va = [f"{k[4:]} {_fmt(v)}" for k, v in rec.items() if k.startswith("val_") and k != "val_count"]
    if va:
        parts.append("val " + " ".join(va))
    em = [f"{k[8:]} {_fmt(v)}" for k, v in rec.items() if k.startswith("ema_val_") and k[8:] == primary]
    if em:
        parts.append("ema " + " ".join(em))
    parts.append(f"lr {rec['lr']:.3g}")
    parts.append(f"{rec['images_per_s']:.0f} img/s")
    parts.append(f"{rec['epoch_time_s']:.1f}s")
    return "  ".join(parts)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def _yaml(d: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=True)


# ------------------------------------------------------------------------------------------------ evaluate
def evaluate_checkpoint(cfg: argparse.Namespace, checkpoint_path: str, metadata: dict[str, Any],
                        state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Metrics of the checkpoint on ``cfg.data`` (the task's evaluation split), all ranks agreeing."""
    d = setup_distributed(cfg.device)
    try:
        seed_everything(int(cfg.seed or 0))
        rep = Reporter(d.is_main, cfg.progress or "auto", None)
        task = get_task(cfg.task)(cfg, log=rep.log)
        model = task.build_model()
        ckpt.load_model_weights(model, state_dict, checkpoint_path, checkpoint_model=metadata.get("model"))
        model.to(d.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        ds = task.build_eval_dataset()
        loader = make_loader(ds, int(cfg.batch_size), ShardSampler(len(ds), d.rank, d.world_size), int(cfg.workers),
                             task.collate_fn("val"), False, d.device)
        amp = resolve_amp(cfg.amp, d.device)
        ctx = EvalContext(device=d.device, rank=d.rank, world_size=d.world_size,
                          autocast=autocast_factory(d.device, amp), progress=rep.progress)
        t0 = time.perf_counter()
        m = task.evaluate(model, loader, ctx)
        m = dict(m)
        m["seconds"] = time.perf_counter() - t0
        skipped = getattr(ds, "num_skipped", 0)
        if skipped:
            m["skipped_images"] = skipped
        return m
    finally:
        teardown_distributed(d)
