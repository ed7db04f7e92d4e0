"""Errors a user can fix: the command line prints their message (no traceback) and exits non-zero."""
from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing/empty data folder, a checkpoint that does not fit, a bad option.

    The message says what was expected and what was found.
    """

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; the message names the step and where the last good checkpoint is."""

    exit_code = 3
