"""Errors a user can fix: the command line prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """Bad input: a missing/empty data folder, a checkpoint that does not fit, a bad option.

    The message says what was expected and what was found.
    """

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; the message names the step and where the last good checkpoint is."""

    exit_code = 3


class WriteFailed(UserError):
    """A file of the run could not be written (disk full, quota, permissions): the message names the file and
    the free space on its file system. Exit code 74, ``EX_IOERR`` of sysexits.h."""

    exit_code = 74


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` met while writing ``path`` into :class:`WriteFailed`.

    Also when the ``OSError`` arrives wrapped: ``torch.save`` reports a failed write to a file as a
    ``RuntimeError`` whose context is the ``OSError``.
    """
    try:
        yield
    except WriteFailed:
        raise
    except Exception as err:
        cause = _os_error_in(err)
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        raise WriteFailed(f"cannot write {path}: {reason} ({free_space(path)})") from err


def free_space(path: str | os.PathLike) -> str:
    """``"1.2 GiB free on /data"``: the free space of the file system that holds ``path``."""
    where = Path(os.path.abspath(path)).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as err:
        return f"free space of {where} unknown: {err.strerror or err}"
    size, unit = float(free), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.0f} {unit} free on {where}" if unit == "B" else f"{size:.1f} {unit} free on {where}"


def _os_error_in(err: BaseException) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
