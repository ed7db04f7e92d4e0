"""The bundled digits and the deterministic, resumable, sharded sampling."""

from __future__ import annotations

import random

import numpy as np
import torch

from sofa.data.digits import DigitsDataset, digits_split
from sofa.data.sampling import EpochShardSampler, SeededDataset, ShardSampler


def test_digits_split_is_fixed_by_the_seed():
    a, b, c = digits_split(0), digits_split(0), digits_split(1)
    assert len(a["train"][0]) + len(a["test"][0]) == 1797
    assert len(a["test"][0]) == 360
    assert np.array_equal(a["test"][0], b["test"][0]) and np.array_equal(a["test"][1], b["test"][1])
    assert not np.array_equal(a["test"][0], c["test"][0])
    assert a["train"][0].dtype == np.uint8 and a["train"][0].max() == 255  # 0..16 scaled to 0..255
    assert np.bincount(a["test"][1]).min() >= 35  # stratified


def test_digits_images_are_upscaled_rgb():
    ds = DigitsDataset("test", img_size=24)
    img, y = ds[0]
    assert img.mode == "RGB" and img.size == (24, 24) and 0 <= y < 10
    assert DigitsDataset("val", img_size=(16, 20))[0][0].size == (20, 16)


def test_epoch_shard_sampler_shards_cover_the_epoch_once():
    n, world = 23, 3
    shards = [list(EpochShardSampler(n, r, world, seed=5)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal length on every rank (padded)
    idx = [i for s in shards for _, i in s]
    assert set(idx) == set(range(n)) and len(idx) == 24  # one padding sample
    s = EpochShardSampler(n, 0, 1, seed=5)
    e0 = [i for _, i in s]
    s.set_epoch(1)
    e1 = [i for _, i in s]
    assert sorted(e0) == sorted(e1) and e0 != e1  # reshuffled per epoch
    s.set_epoch(0)
    assert [i for _, i in s] == e0  # ... reproducibly
    s.set_epoch(1, start=7)
    assert [i for _, i in s] == e1[7:] and len(s) == n - 7  # resuming mid-epoch continues the same order
    assert all(e == 1 for e, _ in s)


def test_shard_sampler_has_no_padding():
    parts = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))


class _Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_seeded_dataset_makes_augmentation_a_function_of_seed_epoch_index():
    ds = SeededDataset(_Noisy(), seed=3)
    assert ds[(2, 4)] == ds[(2, 4)]
    assert ds[(2, 4)] != ds[(3, 4)] and ds[(2, 4)] != ds[(2, 5)]
    assert SeededDataset(_Noisy(), seed=4)[(2, 4)] != ds[(2, 4)]
    # independent of the loading order and of the worker that loads it
    sampler = EpochShardSampler(6, seed=0)
    sampler.set_epoch(2)
    a = [
        x for b in torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=0) for x in b[0].tolist()
    ]
    b = [
        x for b in torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2) for x in b[0].tolist()
    ]
    assert a == b
