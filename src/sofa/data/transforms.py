"""Train/eval transforms: timm's pipeline, driven by the model's ``pretrained_cfg`` and the run's options."""
from __future__ import annotations

from typing import Any

from timm.data import create_transform


def resolve_data_config(model, img_size: int | tuple[int, int] | None = None, crop_pct: float | None = None,
                        interpolation: str | None = None) -> dict[str, Any]:
    """``{"input_size", "mean", "std", "crop_pct", "interpolation"}`` from the model's pretrained_cfg,
    with the run's image size / crop / interpolation taking precedence where given."""
    from timm.data import resolve_data_config as timm_resolve

    cfg = dict(timm_resolve({}, model=model))
    if img_size:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        cfg["input_size"] = (3, int(hw[0]), int(hw[1]))
    if crop_pct:
        cfg["crop_pct"] = float(crop_pct)
    if interpolation:
        cfg["interpolation"] = interpolation
    cfg["mean"] = tuple(float(x) for x in cfg["mean"])
    cfg["std"] = tuple(float(x) for x in cfg["std"])
    cfg["input_size"] = tuple(int(x) for x in cfg["input_size"])
    return cfg


def build_transform(data_cfg: dict[str, Any], training: bool, aug: dict[str, Any] | None = None):
    """timm ``create_transform`` for training (with the augmentation options in ``aug``) or evaluation
    (resize to ``input_size / crop_pct``, centre crop, with the model's interpolation)."""
    common = dict(
        input_size=data_cfg["input_size"],
        interpolation=data_cfg.get("interpolation", "bicubic"),
        mean=data_cfg["mean"],
        std=data_cfg["std"],
    )
    if not training:
        return create_transform(is_training=False, crop_pct=data_cfg.get("crop_pct"), **common)
    aug = dict(aug or {})
    train_interp = aug.pop("train_interpolation", None) or "random"
    common["interpolation"] = train_interp
    return create_transform(
        is_training=True,
        scale=tuple(aug.get("scale") or (0.08, 1.0)),
        ratio=tuple(aug.get("ratio") or (3 / 4, 4 / 3)),
        hflip=float(aug.get("hflip", 0.5)),
        vflip=float(aug.get("vflip", 0.0)),
        color_jitter=float(aug.get("color_jitter", 0.4) or 0.0),
        auto_augment=aug.get("aa") or None,
        re_prob=float(aug.get("reprob", 0.0) or 0.0),
        re_mode=aug.get("remode", "pixel"),
        re_count=int(aug.get("recount", 1)),
        **common,
    )
