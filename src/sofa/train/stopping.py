"""Stopping a run by signal: what ``sofa train`` does on SIGTERM, SIGINT and SIGUSR1.

* SIGTERM (sent by ``timeout``, SLURM's ``scancel``, systemd, a container runtime) and SIGINT (Ctrl-C) ask the
  run to stop: the loop notices at the end of the step under way, writes ``last.pt`` at that step, prints how
  to continue (``sofa train --resume RUN_DIR``) and exits with 128 + the signal's number (143 for SIGTERM,
  130 for SIGINT), so that a scheduler can tell a stopped run from a finished one. A second Ctrl-C quits at
  once, saving nothing more (``KeyboardInterrupt``).
* SIGUSR1 asks for a checkpoint at the next step; the run goes on.

The parent process owns the stop. These signals usually reach the whole process group, the data-loader
workers included, and a worker killed by one makes the parent's next batch fetch fail ("DataLoader worker
exited unexpectedly") before the loop can save. So workers never act on them: :class:`DataLoader` starts its
workers with the signals blocked (a forked worker inherits the mask, which covers the moments before its init
function runs), and :func:`ignore_stop_signals` (the workers' ``worker_init_fn``) ignores them for good.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Iterator

import torch

#: signals that ask the run to stop (saving first)
STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
#: the signals the parent handles; a data-loader worker ignores all of them (SIGUSR1's default action would
#: kill a worker too, were it sent to the process group)
PARENT_SIGNALS: tuple[int, ...] = STOP_SIGNALS + ((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ())


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by signal ``signum``: 128 + its number."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(int(signum)).name


class StopRequests:
    """What signals have asked of the loop, which polls ``save`` and ``stop_signal`` once per step.

    A context manager: installs the handlers on entry (in the main thread only; elsewhere it records nothing)
    and restores the previous ones on exit.
    """

    def __init__(self) -> None:
        self.save = False
        self.stop_signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def stop(self) -> bool:
        return self.stop_signal is not None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in PARENT_SIGNALS:
                handler = self._on_save if sig == getattr(signal, "SIGUSR1", None) else self._on_stop
                self._old[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _on_save(self, signum, frame) -> None:
        self.save = True

    def _on_stop(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.stop_signal == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: quit now
        if self.stop_signal is None:
            self.stop_signal = int(signum)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the loop's data loaders: the worker ignores the parent's signals, then unblocks
    them (they were blocked while it started, see :class:`DataLoader`)."""
    for sig in PARENT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENT_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the parent's signals back in this thread; a signal that came meanwhile is handled on exit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, PARENT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _init_worker(user_init_fn, worker_id: int) -> None:
    ignore_stop_signals(worker_id)
    if user_init_fn is not None:
        user_init_fn(worker_id)


class DataLoader(torch.utils.data.DataLoader):
    """PyTorch's DataLoader whose worker processes never receive a stop signal meant for the run.

    Its workers are started (per iteration) with :data:`PARENT_SIGNALS` blocked and ignore them from their
    init function on; pass ``worker_init_fn`` to run yours after that.
    """

    def __init__(self, *args: Any, worker_init_fn=None, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=functools.partial(_init_worker, worker_init_fn), **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with stop_signals_blocked():
            return super().__iter__()


def make_loader(
    dataset,
    batch_size: int,
    sampler=None,
    workers: int = 0,
    collate_fn=None,
    drop_last=False,
    device: torch.device | None = None,
):
    """A data loader whose workers leave stop signals to this process (see ``sofa.train.stopping``)."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(persistent_workers=False, prefetch_factor=2)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=bool(device is not None and device.type == "cuda"),
        **kw,
    )
