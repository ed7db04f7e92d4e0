"""The training transform: the default augmentation runs on real photos for thousands of seeded draws, every op
of every built-in policy is valid for the installed Pillow, a sample whose transform fails is skipped and counted,
and an unknown ``--aa`` is one clear error at start-up."""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sofa.data.folder import ImageFolderDataset
from sofa.data.sampling import seed_everything
from sofa.data.skipping import MAX_TRANSFORM_FAILURES_IN_A_ROW
from sofa.data.synthetic import make_image_folder
from sofa.data.transforms import build_transform, check_auto_augment, policy_ops, posterize
from sofa.errors import UserError

from helpers import TINY_TRAIN

DATA_CFG = {
    "input_size": (3, 48, 48),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]


def random_crop(photos: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
    """A random window (40–160 px a side, any aspect) of one of the real photos."""
    photo = photos[int(rng.integers(len(photos)))]
    h, w = (int(v) for v in rng.integers(40, 161, size=2))
    y, x = int(rng.integers(photo.shape[0] - h)), int(rng.integers(photo.shape[1] - w))
    return Image.fromarray(photo[y : y + h, x : x + w])


def default_augmentation() -> dict:
    """The classification task's training options as ``sofa train`` defaults them (the ImageNet recipe)."""
    from sofa.train.classification import ClassificationTask

    parser = argparse.ArgumentParser()
    ClassificationTask.add_args(parser)
    d = parser.parse_args([])
    return dict(
        scale=d.scale,
        ratio=d.ratio,
        hflip=d.hflip,
        vflip=d.vflip,
        color_jitter=d.color_jitter,
        aa=d.aa,
        reprob=d.reprob,
        remode=d.remode,
        recount=d.recount,
        train_interpolation=d.train_interpolation,
    )


def test_default_augmentation_survives_thousands_of_draws_on_real_photos(photos):
    aug = default_augmentation()
    assert aug["aa"] == "rand-m9-mstd0.5-inc1"
    tf = build_transform(DATA_CFG, training=True, aug=aug)
    rng = np.random.default_rng(0)
    # about 1 draw in 700 asks posterize for 0 bits; 4000 draws meet it several times
    for draw in range(4000):
        seed_everything(draw)
        x = tf(random_crop(photos, rng))
        assert x.shape == (3, 48, 48) and torch.isfinite(x).all()


POLICIES = [
    "rand-m9-mstd0.5-inc1",
    "rand-m9-mstd0.5",
    "rand-m7-n3-mmax20-inc1",
    "rand-m9-tweights",
    "rand-m9-t3aw",
    "augmix-m5-w4-d2",
    "original",
    "originalr",
    "v0",
    "v0r",
    "3a",
    "original-mstd0.5",
]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_op_of_every_policy_is_valid_at_every_magnitude(photos, policy):
    tf = build_transform(DATA_CFG, training=True, aug={"aa": policy})
    ops = policy_ops(tf)
    assert ops, "the built transform holds the policy's ops"
    img = random_crop(photos, np.random.default_rng(1))
    seed_everything(0)
    for op in ops:
        top = op.magnitude_max or 10
        op.prob, op.magnitude_std = 1.0, 0.0
        for magnitude in np.linspace(0, top, 4 * int(top) + 1):
            op.magnitude = float(magnitude)
            out = op(img)
            assert out.size == img.size, (op.name, magnitude)


def test_posterize_keeps_the_bits_it_is_asked_for(photos):
    img = random_crop(photos, np.random.default_rng(2))
    for bits in range(1, 8):
        assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
    assert posterize(img, 8) is img
    for bits in (0, -4):  # keeps no bit: black, as Pillow gave before it refused bits < 1
        out = posterize(img, bits)
        assert out.mode == img.mode and out.size == img.size and not np.asarray(out).any()


def test_the_policy_ops_are_swapped_only_in_sofas_transform():
    from timm.data import create_transform
    from timm.data.auto_augment import NAME_TO_OP

    ours = policy_ops(build_transform(DATA_CFG, training=True, aug={"aa": "rand-m9-mstd0.5-inc1"}))
    assert {op.name: op.aug_fn for op in ours}["PosterizeIncreasing"] is posterize
    theirs = policy_ops(create_transform(48, is_training=True, auto_augment="rand-m9-mstd0.5-inc1"))
    assert {op.name: op.aug_fn for op in theirs}["PosterizeIncreasing"] is NAME_TO_OP["PosterizeIncreasing"]


# ------------------------------------------------------------------------------------------ failed transforms
def fails_on(img: Image.Image) -> bool:
    return zlib.crc32(img.tobytes()) % 4 == 0  # about a quarter of the images


class FailsOnSomeImages:
    """A transform that raises on the images :func:`fails_on` picks."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if fails_on(img):
            raise ValueError("this draw is not allowed")
        return torch.from_numpy(np.asarray(img.resize((8, 8))).copy())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_whose_transform_fails_is_skipped_and_counted(tmp_path, workers, capfd):
    make_image_folder(tmp_path, num_classes=2, train_per_class=6, val_per_class=1)
    ds = ImageFolderDataset(tmp_path / "train", transform=FailsOnSomeImages())
    failing = sum(fails_on(Image.open(p).convert("RGB")) for p, _ in ds.samples)
    assert 0 < failing <= len(ds) // 2
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
    assert sum(len(y) for _, y in loader) == len(ds)  # every index yields a sample: the next one takes its place
    assert ds.num_skipped == failing  # counted across workers
    err = capfd.readouterr().err
    assert err.count("its transform failed: ValueError: this draw is not allowed") == failing


def test_a_transform_that_always_fails_is_an_error_not_a_skip(tmp_path):
    make_image_folder(tmp_path, num_classes=2, train_per_class=6, val_per_class=1)

    def broken(img):
        raise TypeError("bad transform")

    ds = ImageFolderDataset(tmp_path / "train", transform=broken)
    with pytest.raises(RuntimeError, match="broken, not unlucky") as info:
        ds[0]
    assert isinstance(info.value.__cause__, TypeError)
    assert ds.num_skipped == MAX_TRANSFORM_FAILURES_IN_A_ROW


# ------------------------------------------------------------------------------------------ --aa strings
@pytest.mark.parametrize("policy", POLICIES + ["rand", "augmix", "rand-m9-n2-p0.5-mstd101-inc0"])
def test_known_policies_are_accepted(policy):
    check_auto_augment(policy)


@pytest.mark.parametrize(
    "policy, says",
    [
        ("bogus", "unknown augmentation policy 'bogus'"),
        ("randaugment-m9", "unknown augmentation policy 'randaugment'"),
        ("rand-m9-mstd0.5-incl", "cannot read section 'incl'"),  # timm would silently drop it
        ("rand-m9.5", "cannot read section 'm9.5'"),
        ("rand-x3", "cannot read section 'x3'"),
        ("rand-tfoo", "unknown RandAugment op set 'tfoo'"),
        ("augmix-m3-z1", "cannot read section 'z1'"),
        ("v0-m9", "cannot read section 'm9'"),
    ],
)
def test_unknown_policies_are_one_clear_error(policy, says):
    with pytest.raises(UserError, match=says):
        check_auto_augment(policy)
    with pytest.raises(UserError, match=says):
        build_transform(DATA_CFG, training=True, aug={"aa": policy})


def test_train_with_an_unknown_policy_stops_at_start_up_with_one_line(tmp_path, capsys):
    from sofa.cli import main

    make_image_folder(tmp_path / "data", num_classes=2, train_per_class=2, val_per_class=1)
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "data"),
            *TINY_TRAIN,
            "--epochs",
            "1",
            "--output",
            str(tmp_path / "run"),
            "--aa",
            "rand-m9-mstd0.5-incl",
        ]
    )
    out = capsys.readouterr()
    assert code == 2
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--aa 'rand-m9-mstd0.5-incl'" in errors[0]
    assert "Traceback" not in out.err + out.out and "epoch 1/1" not in out.err + out.out
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
