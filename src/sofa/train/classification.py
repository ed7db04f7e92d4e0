"""Image classification: the first task of the generic loop (the bundled digits or an image folder)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sofa.train.task import StepOutput, Task, register_task

DIGITS = "digits"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in str(text).replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like '0.08 1.0', got {text!r}") from None


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    higher_is_better = True
    # the ImageNet recipe of the SOFT / SeTformer / PoolFormer papers (DeiT-style); digits overrides below
    defaults: dict[str, Any] = {}

    #: defaults for the bundled digits (8×8 images): small images, no flips (a flipped 2 is no 2), light crops
    #: soft_mini: a 0.65M-parameter SOFT (the reference fixtures' configuration); one torch thread plus one
    #: loader process use two cores without OpenMP's spin-waits, which cost up to 20× on a busy machine
    DIGITS_PROFILE: dict[str, Any] = dict(
        model="soft_mini",
        threads=1,
        workers=1,
        img_size=32,
        epochs=15,
        batch_size=64,
        lr=2e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        drop_path=0.0,
        smoothing=0.1,
        mixup=0.0,
        cutmix=0.0,
        aa="",
        reprob=0.0,
        hflip=0.0,
        color_jitter=0.0,
        scale=(0.75, 1.0),
        ratio=(0.9, 1.1),
        crop_pct=1.0,
    )

    @classmethod
    def add_args(cls, p: argparse._ActionsContainer) -> None:
        p.add_argument(
            "--num-classes",
            type=int,
            default=None,
            help="head size (default: the number of class folders / 10 for digits)",
        )
        p.add_argument(
            "--checkpoint",
            default=None,
            metavar="FILE",
            help="initial weights (.safetensors/.pt/run dir); a head of another size is re-initialised",
        )
        p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (default 0.1)")
        p.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha, 0 = off (default 0.8)")
        p.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha, 0 = off (default 1.0)")
        p.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch (default 1)")
        p.add_argument(
            "--mixup-switch-prob",
            type=float,
            default=0.5,
            help="probability of CutMix instead of Mixup when both are on (default 0.5)",
        )
        p.add_argument(
            "--aa",
            default="rand-m9-mstd0.5-inc1",
            help="RandAugment policy, timm syntax; '' = off (default rand-m9-mstd0.5-inc1)",
        )
        p.add_argument("--reprob", type=float, default=0.25, help="random erasing probability (default 0.25)")
        p.add_argument("--remode", default="pixel", help="random erasing mode (default pixel)")
        p.add_argument("--recount", type=int, default=1, help="random erasing count (default 1)")
        p.add_argument("--scale", type=_floats, default=(0.08, 1.0), help="RandomResizedCrop scale range")
        p.add_argument("--ratio", type=_floats, default=(3 / 4, 4 / 3), help="RandomResizedCrop aspect range")
        p.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability (default 0.5)")
        p.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability (default 0)")
        p.add_argument("--color-jitter", type=float, default=0.4, help="colour jitter strength (default 0.4)")
        p.add_argument("--train-interpolation", default="random", help="resize interpolation in training")
        p.add_argument(
            "--crop-pct",
            type=float,
            default=None,
            help="evaluation centre-crop fraction (default: the model's pretrained_cfg)",
        )
        p.add_argument(
            "--interpolation", default=None, help="evaluation interpolation (default: the model's pretrained_cfg)"
        )
        p.add_argument(
            "--verify-images",
            choices=("auto", "always", "never"),
            default="auto",
            help="decode every image up front and drop unreadable ones (auto: folders of ≤20k images); "
            "unreadable images met later are skipped and counted either way",
        )

    @classmethod
    def profile(cls, cfg: argparse.Namespace) -> dict[str, Any]:
        """Defaults that depend on the data (used by the option resolver)."""
        return dict(cls.DIGITS_PROFILE) if str(getattr(cfg, "data", DIGITS) or DIGITS) == DIGITS else {}

    def __init__(self, cfg, log=None):
        super().__init__(cfg, log)
        self.data_config: dict[str, Any] | None = None
        self._classes: list[str] | None = list(cfg.classes) if getattr(cfg, "classes", None) else None
        self.mixup_fn = None
        self.skipped = 0

    # ---------------------------------------------------------------- data
    @property
    def is_digits(self) -> bool:
        return str(self.cfg.data or DIGITS) == DIGITS

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            if self.is_digits:
                from sofa.data.digits import DIGITS_CLASSES

                self._classes = list(DIGITS_CLASSES)
            else:  # the training folder's; where there is none, sofa eval's (which needs no train/)
                from sofa.data.folder import find_classes, image_folder_split, image_folder_splits

                train = Path(self.cfg.data) / "train"
                if not train.is_dir():
                    if getattr(self.cfg, "split", None) is None:  # training: an error describing the layout
                        train, _ = image_folder_splits(self.cfg.data)
                    else:
                        train = image_folder_split(self.cfg.data, self.eval_split)
                self._classes = find_classes(train)
        return self._classes

    @property
    def eval_split(self) -> str:
        """The split ``sofa eval`` measures (its ``--split``, set only there): val (default) or test."""
        return getattr(self.cfg, "split", None) or "val"

    @property
    def num_classes(self) -> int:
        n = getattr(self.cfg, "num_classes", None)
        return int(n) if n else len(self.classes)

    def _data_config(self) -> dict[str, Any]:
        if self.data_config is None:
            from sofa.data.transforms import resolve_data_config

            self.data_config = resolve_data_config(
                self.build_model(load_weights=False), self.cfg.img_size, self.cfg.crop_pct, self.cfg.interpolation
            )
        return self.data_config

    def _aug(self) -> dict[str, Any]:
        c = self.cfg
        return dict(
            scale=c.scale,
            ratio=c.ratio,
            hflip=c.hflip,
            vflip=c.vflip,
            color_jitter=c.color_jitter or None,
            aa=c.aa or None,
            reprob=c.reprob,
            remode=c.remode,
            recount=c.recount,
            train_interpolation=c.train_interpolation,
        )

    def _dataset(self, split: str, transform):
        if self.is_digits:
            from sofa.data.digits import DigitsDataset

            size = self._data_config()["input_size"][1:]
            return DigitsDataset(split, img_size=tuple(size), transform=transform, seed=int(self.cfg.seed))
        from sofa.data.folder import ImageFolderDataset, image_folder_split

        ds = ImageFolderDataset(image_folder_split(self.cfg.data, split), transform, classes=self.classes)
        mode = getattr(self.cfg, "verify_images", "auto")
        if mode == "always" or (mode == "auto" and len(ds) <= 20000):
            bad = ds.verify()
            if bad:
                self.log(f"warning: {bad} unreadable image(s) in {ds.root} skipped")
        return ds

    def build_datasets(self):
        from sofa.data.transforms import build_transform

        if not self.is_digits:
            from sofa.data.folder import image_folder_splits

            image_folder_splits(self.cfg.data)  # both folders, or an error describing the layout
        dc = self._data_config()
        train = self._dataset("train", build_transform(dc, True, self._aug()))
        val = self._dataset("val", build_transform(dc, False))
        return train, val

    def build_eval_dataset(self):
        from sofa.data.transforms import build_transform

        if len(self.classes) != self.num_classes:
            self.log(
                f"warning: the model has {self.num_classes} classes and the data {len(self.classes)} "
                f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''}): the data's classes are "
                f"scored as the model's classes 0..{len(self.classes) - 1}, which is meaningful only if the "
                f"model was trained with them in that order"
            )
        return self._dataset(self.eval_split, build_transform(self._data_config(), False))

    # ---------------------------------------------------------------- model
    def build_model(self, load_weights: bool = True) -> nn.Module:
        from sofa.train.factory import create_classifier

        c = self.cfg
        model = create_classifier(
            c.model,
            num_classes=self.num_classes,
            img_size=c.img_size,
            drop_path_rate=c.drop_path if c.drop_path else None,
        )
        if load_weights and getattr(c, "checkpoint", None):
            from sofa.checkpoint import read_checkpoint
            from sofa.train import factory

            sd, meta = read_checkpoint(c.checkpoint)
            factory.load_weights(
                model,
                sd,
                f"checkpoint {c.checkpoint}",
                allow_head_reset=True,
                log=self.log,
                checkpoint_model=meta.get("model"),
            )
            self.log(f"loaded initial weights from {c.checkpoint}")
        if self.data_config is None:
            from sofa.data.transforms import resolve_data_config

            self.data_config = resolve_data_config(model, c.img_size, c.crop_pct, c.interpolation)
        if (c.mixup or c.cutmix) and c.mixup_prob > 0 and self.mixup_fn is None:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=c.mixup,
                cutmix_alpha=c.cutmix,
                prob=c.mixup_prob,
                switch_prob=c.mixup_switch_prob,
                label_smoothing=c.smoothing,
                num_classes=self.num_classes,
            )
        return model

    # ---------------------------------------------------------------- steps
    def train_step(self, model, batch) -> StepOutput:
        x, y = batch
        if self.mixup_fn is not None:
            if x.shape[0] % 2:  # timm's Mixup pairs samples: drop one from an odd batch
                x, y = x[:-1], y[:-1]
            xm, ym = self.mixup_fn(x, y)
            logits = model(xm)
            loss = torch.sum(-ym * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=float(self.cfg.smoothing or 0.0))
        with torch.no_grad():
            acc = (logits.argmax(-1) == y).float().mean() * 100.0
        return StepOutput(loss, {"acc": acc}, int(x.shape[0]))

    def eval_step(self, model, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == y[:, None]
        return {
            "loss_sum": F.cross_entropy(logits, y, reduction="sum"),
            "correct1": hit[:, 0].sum(),
            "correct5": hit.any(dim=-1).sum(),
            "count": torch.tensor(float(x.shape[0])),
        }

    def finalize_eval(self, sums):
        n = float(sums.get("count", torch.tensor(0.0)))
        if n == 0:
            return {"top1": 0.0, "top5": 0.0, "loss": float("nan"), "count": 0}
        return {
            "top1": float(sums["correct1"]) * 100.0 / n,
            "top5": float(sums["correct5"]) * 100.0 / n,
            "loss": float(sums["loss_sum"]) / n,
            "count": int(n),
        }

    def checkpoint_metadata(self) -> dict[str, Any]:
        dc = self._data_config()
        return {"classes": self.classes, "num_classes": self.num_classes, "data_config": dc}


register_task("classification", ClassificationTask)


def predict_images(
    model: nn.Module,
    paths: list[str],
    data_config: dict[str, Any],
    classes: list[str] | None,
    topk: int = 5,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file: ``[{"image", "top": [{"class", "index", "prob"}]}]``.

    Unreadable files get ``{"image", "error"}`` instead of failing the whole call.
    """
    from sofa.data.folder import load_image
    from sofa.data.transforms import build_transform

    tf = build_transform(data_config, training=False)
    model.eval().to(device)
    results: list[dict[str, Any] | None] = [None] * len(paths)
    todo: list[tuple[int, torch.Tensor]] = []
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            results[i] = {"image": str(p), "error": "no such file"}
            continue
        try:
            todo.append((i, tf(load_image(p))))
        except Exception as err:
            results[i] = {"image": str(p), "error": f"unreadable image: {type(err).__name__}: {err}"}
    with torch.no_grad():
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            x = torch.stack([t for _, t in chunk]).to(device)
            probs = model(x).float().softmax(-1).cpu()
            k = min(topk, probs.shape[-1])
            val, idx = probs.topk(k, dim=-1)
            for (i, _), v, ix in zip(chunk, val, idx, strict=True):
                top = [
                    {
                        "class": classes[j] if classes and j < len(classes) else str(j),
                        "index": int(j),
                        "prob": float(pv),
                    }
                    for pv, j in zip(v.tolist(), ix.tolist(), strict=True)
                ]
                results[i] = {"image": str(paths[i]), "top": top}
    return results  # type: ignore[return-value]
