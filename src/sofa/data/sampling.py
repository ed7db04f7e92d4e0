"""Deterministic, resumable, sharded sampling.

``EpochShardSampler`` yields this rank's share of a permutation seeded by ``(seed, epoch)`` (padded like
``DistributedSampler`` so that every rank gets the same number of samples), optionally starting after the first
``start`` samples of the shard (resuming mid-epoch). It yields ``(epoch, index)`` pairs; ``SeededDataset`` unpacks
them and seeds python ``random``, numpy and torch from ``(seed, epoch, index)`` before loading the sample, so a
sample's augmentation does not depend on the worker that loads it, on the number of ranks or on a resume.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing; stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & _MASK


def seed_everything(seed: int, cuda: bool = False) -> None:
    """Seed python ``random``, numpy and torch's CPU generator (and the current CUDA device's if ``cuda``).

    ``torch.default_generator.manual_seed`` rather than ``torch.manual_seed``: the latter also queues a lazy
    seeding of every CUDA device, costing ~0.2 ms, which adds up when done per sample.
    """
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)
    if cuda:
        torch.cuda.manual_seed(seed)


class EpochShardSampler(Sampler):
    """This rank's samples of epoch ``epoch`` (call ``set_epoch``), as ``(epoch, index)`` pairs."""

    def __init__(
        self,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n = num_samples
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0
        if drop_last and num_samples >= world_size:
            self.per_rank = num_samples // world_size
        else:
            self.per_rank = -(-num_samples // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of this rank's samples to skip (already consumed before a resume)."""
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5A3))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if total > len(order):  # pad by repeating from the start
            reps = -(-total // len(order))
            order = (order * reps)[:total]
        else:
            order = order[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.indices()[self.start :]:
            yield (self.epoch, i)

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


class ShardSampler(Sampler):
    """Evaluation: rank r reads indices r, r+W, r+2W, ... (no padding, so no sample counts twice)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class SeededDataset(Dataset):
    """Wraps a dataset; ``ds[(epoch, index)]`` seeds the global RNGs from ``(seed, epoch, index)`` then loads."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            epoch, index = key
            seed_everything(mix_seed(self.seed, epoch, index, 0xDA7A))
        else:
            index = key
        return self.dataset[index]

    def __getattr__(self, name):  # classes, num_skipped, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IntervalDraws(Dataset):
    """``length`` samples drawn uniformly, with replacement, from ``data``: one evaluation interval of training
    (the step-based schedules of the LRA and masked-LM tasks, whose loop epoch is one interval).

    Item ``i`` is ``data[j]`` with ``j`` drawn from torch's global generator, which the training loop seeds from
    ``(seed, epoch, i)`` before every item (:class:`SeededDataset`): draws differ between epochs and positions,
    and repeat exactly on a resumed run, in any worker and on any rank.
    """

    def __init__(self, data: Dataset, length: int):
        if len(data) == 0:
            from sofa.errors import UserError

            raise UserError("the training split is empty")
        self.data, self.length = data, int(length)

    @classmethod
    def for_interval(cls, data: Dataset, steps: int, batch_size: int) -> IntervalDraws:
        """The draws of ``steps`` optimiser steps of ``batch_size`` per process, over all processes of the run
        (``WORLD_SIZE``; each rank's sampler then takes its share)."""
        return cls(data, int(steps) * int(batch_size) * int(os.environ.get("WORLD_SIZE", "1")))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.data[int(torch.randint(len(self.data), ()))]
