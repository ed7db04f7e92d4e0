"""One run directory, one writer: ``sofa train`` holds ``RUN_DIR/.lock`` for the run's lifetime.

The lock is an exclusive ``flock`` on that file, which also records who holds it (pid, host, start time). The
kernel drops the lock when its holder exits, however it exits, so the lock of a process that died (killed,
crashed, power lost on a shared file system's client) is simply taken over by the next run; a file left
behind by such a process is only a record. A second ``sofa train`` (or ``--resume``) into a directory whose
lock is held refuses with the holder's pid and host. Under DDP only rank 0 takes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from sofa.errors import UserError, writing

LOCK_NAME = ".lock"


class RunLock:
    """The exclusive lock of a run directory: :meth:`acquire` or refuse, :meth:`release` (also on ``with`` exit).

    ``previous_holder`` is the record left by a holder that died without releasing the lock ("" if none);
    ``unsupported`` says why the file system could not lock (the run then goes on unlocked; "" if it could).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.previous_holder = ""
        self.unsupported = ""

    def acquire(self) -> "RunLock":
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise UserError(
                    f"{self.run_dir} is in use by another sofa train ({holder or 'holder unknown'}): two runs "
                    f"would mix their logs and overwrite each other's checkpoints. Wait for it to end or stop "
                    f"it, or choose another --output"
                ) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                self.unsupported = f"{self.run_dir}'s file system cannot lock files ({err.strerror})"
                break
            except BaseException:
                os.close(fd)
                raise
            # a holder that released the lock may have removed the file meanwhile: lock the file on disk
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        self.previous_holder = "" if self.unsupported else _read(fd)
        record = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        with writing(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        return self

    def release(self) -> None:
        """Remove the file and drop the lock (removing first: a waiting process then finds no stale file)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""
