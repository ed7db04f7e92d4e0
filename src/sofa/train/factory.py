"""``build_model``: sofa's zoo first (``sofa.create_model``), any timm architecture as a fallback.

Nothing is ever downloaded: models are built with random weights (``pretrained=False``); initial weights come
from ``--checkpoint FILE``.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from sofa.train.errors import UserError


def _sofa_zoo():
    try:
        import sofa

        create = getattr(sofa, "create_model", None)
        names = getattr(sofa, "list_models", None)
        if create is None:
            from sofa.models import create_model as create, list_models as names  # type: ignore
        return create, names
    except ImportError:
        return None, None


def sofa_model_names() -> list[str]:
    _, names = _sofa_zoo()
    try:
        return list(names()) if names else []
    except Exception:
        return []


def build_model(name: str, num_classes: int, img_size: int | tuple[int, int] | None = None,
                drop_path_rate: float | None = None, **kwargs: Any) -> nn.Module:
    """Model ``name`` with a ``num_classes`` head, random weights, for ``img_size`` inputs."""
    create, _ = _sofa_zoo()
    kw: dict[str, Any] = dict(num_classes=num_classes, **kwargs)
    if drop_path_rate is not None:
        kw["drop_path_rate"] = drop_path_rate
    if create is not None and name in sofa_model_names():
        if img_size is not None:
            kw["img_size"] = img_size
        try:
            return create(name, pretrained=False, **kw)
        except TypeError as err:  # a family without an img_size argument (convolutional: any size works)
            if "img_size" in str(err) and "img_size" in kw:
                kw.pop("img_size")
                return create(name, pretrained=False, **kw)
            raise
    import timm

    if not timm.is_model(name):
        avail = sofa_model_names()
        raise UserError(
            f"unknown model {name!r}. sofa models: {', '.join(avail) if avail else '(none registered)'}; "
            "any timm architecture name also works"
        )
    if img_size is not None:
        kw["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except TypeError as err:
        if "img_size" in str(err) and "img_size" in kw:
            kw.pop("img_size")
            return timm.create_model(name, pretrained=False, **kw)
        raise
