"""Samples that cannot be used are skipped and counted, never fatal: the part every dataset of sofa shares.

A sample is skipped when its file(s) cannot be read (corrupt, truncated, empty, not an image) or when its
transform raises on it (an augmentation op that rejects one random draw). The next usable sample of the dataset
takes its place, a warning names what was skipped and why, and :attr:`SkippedSamples.count` counts the skips
across DataLoader worker processes and epochs (an unreadable sample once, a failed transform each time); the
training loop and ``sofa eval`` report the total (``num_skipped`` of the dataset).

A transform that fails on many samples in a row is broken, not unlucky: :func:`load_first_usable` then raises.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Callable, TypeVar

from sofa.errors import UserError

Raw = TypeVar("Raw")
Item = TypeVar("Item")

#: transform failures in a row (within one item) after which the transform counts as broken and the error is raised
MAX_TRANSFORM_FAILURES_IN_A_ROW = 8


class SkippedSamples:
    """The skip count of a dataset of ``size`` samples, shared with its DataLoader workers, and the warnings.

    ``what`` names a sample in the warnings (``"image"``, ``"sample"``). An unreadable sample is warned about and
    counted once, whichever process meets it and however many epochs do (a flag per sample in shared memory); a
    failed transform every time, as each draw differs.
    """

    def __init__(self, size: int, what: str = "image"):
        self.what = what
        # shared memory, inherited by (or sent to) DataLoader workers; the count's lock also guards the flags
        self._count = multiprocessing.Value("l", 0)
        self._unreadable = multiprocessing.Array("b", size, lock=False)

    @property
    def count(self) -> int:
        """Samples skipped so far, by this process and its DataLoader workers."""
        return int(self._count.value)

    def unreadable(self, index: int, name: str, err: Exception) -> None:
        """Sample ``index`` (``name`` in the warning) cannot be read."""
        with self._count.get_lock():
            if self._unreadable[index]:
                return
            self._unreadable[index] = 1
            self._count.value += 1
        print(
            f"warning: skipping unreadable {self.what} {name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True
        )

    def untransformable(self, name: str, err: Exception) -> None:
        """The transform of sample ``name`` raised on this draw."""
        with self._count.get_lock():
            self._count.value += 1
        print(
            f"warning: skipping {self.what} {name}: its transform failed: {type(err).__name__}: {err}",
            file=sys.stderr,
            flush=True,
        )

    def renumber(self, size: int) -> None:
        """The dataset dropped its unreadable samples (already counted) and now holds ``size``, renumbered; call
        before any DataLoader worker starts."""
        self._unreadable = multiprocessing.Array("b", size, lock=False)


def load_first_usable(
    index: int,
    size: int,
    read: Callable[[int], Raw],
    prepare: Callable[[int, Raw], Item],
    name_of: Callable[[int], str],
    skipped: SkippedSamples,
    source: str,
) -> Item:
    """``prepare(i, read(i))`` for the first ``i`` of ``index, index + 1, …`` (wrapping round ``size``) for which
    neither raises; each ``i`` skipped is counted in ``skipped`` under ``name_of(i)``.

    ``source`` (the dataset's folder) names the dataset in errors: :class:`UserError` when no sample can be read,
    ``RuntimeError`` (from the transform's last error) when ``prepare`` fails on
    :data:`MAX_TRANSFORM_FAILURES_IN_A_ROW` samples in a row, or on every readable one.
    """
    failures_in_a_row, transform_error = 0, None
    for k in range(size):
        i = (index + k) % size
        try:
            raw = read(i)
        except Exception as err:  # corrupt, truncated, empty, not an image, unreadable
            skipped.unreadable(i, name_of(i), err)
            continue
        try:
            return prepare(i, raw)
        except Exception as err:
            skipped.untransformable(name_of(i), err)
            failures_in_a_row, transform_error = failures_in_a_row + 1, err
            if failures_in_a_row >= MAX_TRANSFORM_FAILURES_IN_A_ROW:
                break
    if transform_error is not None:
        raise RuntimeError(
            f"the transform of the {skipped.what}s under {source} failed on {failures_in_a_row} of them in a row: "
            "it is broken, not unlucky; its last error follows"
        ) from transform_error
    raise UserError(f"none of the {size} {skipped.what}s under {source} could be read")
