"""Feature backbones for the dense heads: any sofa model (or any timm model) as a ``features_only`` network.

sofa models are registered in timm's registry when ``sofa`` is imported (names timm already owns get a ``sofa_``
prefix there, e.g. ``sofa_poolformer_s12``), so segmentation_models_pytorch takes them as ``tu-<timm name>``
encoders and torchvision's detectors take them through :func:`create_features`. Weights are never downloaded:
a backbone starts random or from a local classification checkpoint (``sofa convert`` safetensors, an original
release ``.pth``, or a ``sofa train`` checkpoint).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from sofa.models import create_model, get_entry, register_in_timm, timm_name

__all__ = [
    "is_sofa_model",
    "timm_encoder_name",
    "create_features",
    "load_backbone_checkpoint",
    "feature_strides",
    "default_head",
]


def is_sofa_model(name: str) -> bool:
    try:
        get_entry(name)
        return True
    except ValueError:
        return False


def timm_encoder_name(name: str) -> str:
    """The name under which backbone ``name`` lives in timm's registry (sofa models: after registration)."""
    import timm

    if is_sofa_model(name):
        register_in_timm()  # mirrors models registered since sofa was imported too
        return timm_name(name)
    if timm.is_model(name):
        return name
    raise ValueError(f"unknown backbone {name!r}: neither a sofa model (sofa.list_models()) nor a timm model")


def default_head(name: str) -> str:
    """The papers' segmentation head for a backbone: Semantic FPN for PoolFormer, UperNet otherwise."""
    return "fpn" if "poolformer" in name else "upernet"


def create_features(
    name: str, checkpoint_path: str | None = None, out_indices: Sequence[int] | None = None, **kwargs: Any
) -> nn.Module:
    """A ``features_only`` model returning a list of NCHW maps, with timm's ``feature_info``.

    sofa models come from ``sofa.create_model(..., features_only=True)`` (which maps and checks a classification
    checkpoint); other timm models load ``checkpoint_path`` through timm's local-file pretrained config.
    """
    if is_sofa_model(name):
        return create_model(
            name,
            features_only=True,
            out_indices=tuple(out_indices or (0, 1, 2, 3)),
            checkpoint_path=checkpoint_path,
            **kwargs,
        )
    import timm

    extra = {} if out_indices is None else {"out_indices": tuple(out_indices)}
    if checkpoint_path is not None:
        extra.update(pretrained=True, pretrained_cfg_overlay={"file": str(checkpoint_path)})
    return timm.create_model(name, features_only=True, **extra, **kwargs)


def feature_strides(model: nn.Module) -> list[int]:
    return [int(r) for r in model.feature_info.reduction()]


def load_backbone_checkpoint(features: nn.Module, name: str, checkpoint_path: str, **kwargs: Any) -> None:
    """Load a classification checkpoint into an already built ``features_only`` model (e.g. smp's encoder).

    Builds the same backbone with the checkpoint by :func:`create_features` (so the mapping and the exact-fit
    checks are the model zoo's) and copies its weights over.
    """
    loaded = create_features(name, checkpoint_path=checkpoint_path, **kwargs)
    own, new = features.state_dict(), loaded.state_dict()
    if set(own) != set(new):
        missing, extra = sorted(set(own) - set(new))[:8], sorted(set(new) - set(own))[:8]
        raise ValueError(
            f"backbone {name}: the checkpoint model's keys differ from the encoder's (missing {missing}, extra {extra})"
        )
    with torch.no_grad():
        features.load_state_dict(new)
