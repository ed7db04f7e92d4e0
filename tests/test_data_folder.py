"""Image folders: clear refusals of bad layouts, bad files skipped and counted, every image mode made RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sofa.data.folder import ImageFolderDataset, image_folder_splits, load_image, to_rgb
from sofa.data.synthetic import make_image_folder
from sofa.errors import UserError


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        image_folder_splits(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="no train/ folder.*found nothing"):
        image_folder_splits(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no val/ folder"):
        image_folder_splits(tmp_path)
    with pytest.raises(UserError, match="no class folders.*empty"):
        ImageFolderDataset(tmp_path / "train")


def test_images_without_class_folders_are_refused(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "a.png")
    with pytest.raises(UserError, match=r"no class folders: expected .*<class name>.*a\.png"):
        ImageFolderDataset(tmp_path / "train")


def test_class_folder_without_images_is_refused(tmp_path):
    make_image_folder(tmp_path, num_classes=2, train_per_class=2, val_per_class=1)
    (tmp_path / "train" / "zebra").mkdir()
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"hold no images.*zebra"):
        ImageFolderDataset(tmp_path / "train")


def test_val_class_unknown_to_training_is_refused(tmp_path):
    make_image_folder(tmp_path, num_classes=2, train_per_class=2, val_per_class=1)
    (tmp_path / "val" / "extra").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "extra" / "x.png")
    train = ImageFolderDataset(tmp_path / "train")
    with pytest.raises(UserError, match="training set lacks.*extra"):
        ImageFolderDataset(tmp_path / "val", classes=train.classes)


def _add_bad_files(folder):
    (folder / "corrupt.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    good = folder / "0000.png"
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    img.save(folder / "full.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:400])


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path, workers, capfd):
    make_image_folder(tmp_path, num_classes=2, train_per_class=4, val_per_class=1)
    _add_bad_files(tmp_path / "train" / "class_0")
    ds = ImageFolderDataset(
        tmp_path / "train", transform=lambda im: torch.from_numpy(np.asarray(im.resize((8, 8))).copy())
    )
    assert len(ds) == 4 * 2 + 4  # all files found; bad ones found out when read
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
    n = sum(len(y) for _, y in loader)
    assert n == len(ds)  # every index yields an image: a bad file is replaced, never fatal
    assert ds.num_skipped == 3  # corrupt.jpg, truncated.png, truncated.jpg (counted across workers too)
    err = capfd.readouterr().err
    for name in ("corrupt.jpg", "truncated.png", "truncated.jpg"):
        assert "skipping unreadable image" in err and name in err


def test_verify_drops_bad_files_up_front(tmp_path):
    make_image_folder(tmp_path, num_classes=2, train_per_class=3, val_per_class=1)
    _add_bad_files(tmp_path / "train" / "class_1")
    ds = ImageFolderDataset(tmp_path / "train")
    assert ds.verify() == 3
    assert len(ds) == 2 * 3 + 1 and ds.num_skipped == 3
    assert all(ds[i][0].mode == "RGB" for i in range(len(ds)))


def test_all_images_of_a_class_unreadable_is_refused(tmp_path):
    make_image_folder(tmp_path, num_classes=2, train_per_class=2, val_per_class=1)
    for f in (tmp_path / "train" / "class_1").iterdir():
        f.write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path / "train")
    with pytest.raises(UserError, match="every image of class folder.*class_1.*unreadable"):
        ds.verify()


def test_modes_are_converted_to_rgb(tmp_path):
    gray = Image.fromarray(np.full((5, 6), 77, np.uint8), "L")
    rgba = Image.fromarray(np.dstack([np.full((5, 6), v, np.uint8) for v in (10, 20, 30, 255)]), "RGBA")
    pal = gray.convert("P")
    cmyk = Image.new("CMYK", (6, 5), (0, 0, 0, 0))
    sixteen = Image.fromarray(np.full((5, 6), 65535, np.uint16))  # 16-bit white
    mid16 = Image.fromarray(np.full((5, 6), 32768, np.uint16))
    la = Image.fromarray(np.dstack([np.full((5, 6), 99, np.uint8), np.full((5, 6), 255, np.uint8)]), "LA")
    for name, img in [
        ("gray", gray),
        ("rgba", rgba),
        ("pal", pal),
        ("cmyk", cmyk),
        ("w16", sixteen),
        ("m16", mid16),
        ("la", la),
    ]:
        path = tmp_path / f"{name}.{'jpg' if name == 'cmyk' else 'png'}"
        img.save(path)
        out = load_image(path)
        assert out.mode == "RGB" and out.size == (6, 5), name
    assert np.asarray(load_image(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(load_image(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(load_image(tmp_path / "la.png"))[0, 0].tolist() == [99, 99, 99]
    # 16-bit PNGs are scaled to 8 bits (not clipped at 255): white stays white, mid-grey is ~128
    assert Image.open(tmp_path / "w16.png").mode.startswith("I")
    assert np.asarray(load_image(tmp_path / "w16.png"))[0, 0].tolist() == [255, 255, 255]
    assert abs(int(np.asarray(load_image(tmp_path / "m16.png"))[0, 0, 0]) - 128) <= 1
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32), "F"))).shape == (2, 2, 3)


def test_image_folder_reads_classes_in_order(tmp_path):
    make_image_folder(tmp_path, num_classes=3, train_per_class=2, val_per_class=1)
    ds = ImageFolderDataset(tmp_path / "train")
    assert ds.classes == ["class_0", "class_1", "class_2"]
    assert sorted(set(ds.targets)) == [0, 1, 2] and len(ds) == 6
    val = ImageFolderDataset(tmp_path / "val", classes=ds.classes)
    assert val.class_to_idx == ds.class_to_idx
