"""The training run and the evaluation run behind ``sofa train`` and ``sofa eval``.

One process per device; under ``torchrun`` the processes form a DDP group (:mod:`sofa.train.distributed`), each
reads its shard of the data and only rank 0 writes files or prints (:mod:`sofa.train.reporting`). SIGTERM and
Ctrl-C stop a run at the step reached, resumably (:mod:`sofa.train.stopping`); one run at a time writes a run
directory (:mod:`sofa.train.runlock`).

:func:`train` claims the run directory and runs a :class:`sofa.train.trainer.Trainer`, the run on this rank;
its state lives in :mod:`sofa.train.state`. :class:`sofa.train.trainer.Callback` objects passed to :func:`train`
hook into the steps and the end of training.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import torch

from sofa import checkpoint as ckpt
from sofa.data.sampling import ShardSampler, seed_everything
from sofa.errors import UserError, WriteFailed, writing
from sofa.train.distributed import Dist, autocast_factory, resolve_amp, setup_distributed, teardown_distributed
from sofa.train.reporting import MetricsLog, Reporter
from sofa.train.runlock import RunLock
from sofa.train.state import TrainResult
from sofa.train.stopping import make_loader
from sofa.train.task import EvalContext, get_task
from sofa.train.trainer import Callback, Trainer


def default_run_dir(cfg: argparse.Namespace) -> Path:
    data = str(cfg.data or "digits")
    data = "digits" if data == "digits" else (Path(data).name or "data")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-{data}-{stamp}"


def train(cfg: argparse.Namespace, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Run ``cfg`` (fully resolved options, see ``sofa.train.config``), calling ``callbacks``' hooks on the way.
    Returns where things were written."""
    d = setup_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, d, list(callbacks))
    finally:
        torch.set_num_threads(threads)
        teardown_distributed(d)


def _claim_run_dir(cfg: argparse.Namespace, d: Dist) -> tuple[Path, RunLock | None, dict[str, Any] | None]:
    """The run directory, decided by rank 0 and shared with the others; rank 0's lock on it (held until the run
    ends); the training state of a resumed run. A user error on rank 0 is raised on every rank."""
    msg, run_dir, lock, resume_state = None, None, None, None
    if d.is_main:
        try:
            if cfg.resume:
                run_dir = Path(cfg.resume)
                if run_dir.is_dir():
                    lock = RunLock(run_dir).acquire()
                resume_state = ckpt.load_training_state(run_dir)
            else:
                run_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
                with writing(run_dir):
                    run_dir.mkdir(parents=True, exist_ok=True)
                lock = RunLock(run_dir).acquire()
                if (run_dir / "last.pt").exists():
                    raise UserError(
                        f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                        f"or choose another --output"
                    )
        except UserError as err:
            msg = str(err)
    try:
        msg, run_dir = d.broadcast((msg, str(run_dir) if run_dir else None))
        if msg:
            raise UserError(msg)
        run_dir = Path(run_dir)
        if cfg.resume and not d.is_main:
            resume_state = ckpt.load_training_state(run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run_dir, lock, resume_state


def _train(cfg: argparse.Namespace, d: Dist, callbacks: list[Callback]) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    run_dir, lock, resume_state = _claim_run_dir(cfg, d)
    try:
        cfg.output = str(run_dir)
        rep = Reporter(d.is_main, cfg.progress, run_dir if d.is_main else None)
        metrics = MetricsLog(run_dir / "metrics.jsonl", d.is_main)
        try:
            if lock is not None and lock.unsupported:
                rep.log(f"warning: {lock.unsupported}: nothing keeps a second run from writing to it")
            if lock is not None and lock.previous_holder:
                rep.log(
                    f"note: took over {lock.path}, left by a run that ended without releasing it "
                    f"({lock.previous_holder})"
                )
            trainer = Trainer(cfg, d, rep, metrics, run_dir, callbacks)
            trainer.setup(resume_state)
            return trainer.fit()
        except UserError as err:  # the command line prints it; log.txt keeps it too
            if isinstance(err, WriteFailed) and d.is_main and (run_dir / "last.pt").is_file():
                hint = WriteFailed(
                    f"{err}; {run_dir / 'last.pt'} from before is intact: make room, then continue "
                    f"with sofa train --resume {run_dir}"
                )
                rep.record(f"error: {hint}")
                raise hint from err
            rep.record(f"error: {err}")
            raise
        finally:
            rep.close()
    finally:
        if lock is not None:
            lock.release()


def evaluate_checkpoint(
    cfg: argparse.Namespace, checkpoint_path: str, metadata: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Metrics of the checkpoint on ``cfg.data`` (the task's evaluation split), all ranks agreeing.

    ``state_dict`` may be in any layout the model's family maps (an original release checkpoint); it must fit
    the model exactly."""
    from sofa.train.factory import load_weights

    d = setup_distributed(cfg.device)
    try:
        seed_everything(int(cfg.seed or 0))
        rep = Reporter(d.is_main, cfg.progress or "auto", None)
        task = get_task(cfg.task)(cfg, log=rep.log)
        model = task.build_model()
        load_weights(model, state_dict, f"checkpoint {checkpoint_path}", checkpoint_model=metadata.get("model"))
        model.to(d.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        ds = task.build_eval_dataset()
        loader = make_loader(
            ds,
            int(cfg.batch_size),
            ShardSampler(len(ds), d.rank, d.world_size),
            int(cfg.workers),
            task.collate_fn("val"),
            False,
            d.device,
        )
        amp = resolve_amp(cfg.amp, d.device)
        ctx = EvalContext(
            device=d.device,
            rank=d.rank,
            world_size=d.world_size,
            autocast=autocast_factory(d.device, amp),
            progress=rep.progress,
        )
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
