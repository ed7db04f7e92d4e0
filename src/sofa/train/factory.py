"""``create_classifier``: a classifier by model name, from sofa's zoo first (``sofa.create_model``), any timm
architecture as a fallback; and ``load_weights``, how the command line puts a checkpoint into such a model.

Nothing is ever downloaded: models are built with random weights (``pretrained=False``); initial weights come
from ``--checkpoint FILE``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from sofa.errors import UserError


def create_classifier(
    name: str,
    num_classes: int,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Model ``name`` with a ``num_classes`` head, random weights, for ``img_size`` inputs."""
    from sofa.models import create_model, list_models

    kw: dict[str, Any] = dict(num_classes=num_classes, **kwargs)
    if drop_path_rate is not None:
        kw["drop_path_rate"] = drop_path_rate
    if name in list_models():
        create = create_model
    else:
        import timm

        if not timm.is_model(name):
            raise UserError(
                f"unknown model {name!r}. sofa models: {', '.join(list_models())}; "
                "any timm architecture name also works"
            )
        create = timm.create_model
    if img_size is None:
        return create(name, pretrained=False, **kw)
    try:
        return create(name, pretrained=False, img_size=img_size, **kw)
    except TypeError as err:  # a family without an img_size argument (convolutional: any size works)
        if "img_size" not in str(err):
            raise
        return create(name, pretrained=False, **kw)


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    allow_head_reset: bool = False,
    log: Callable[[str], None] | None = None,
    checkpoint_model: str | None = None,
) -> None:
    """Load a checkpoint's state dict into a model built by :func:`create_classifier`, in whatever layout the
    model's family knows (an original release ``.pth`` is mapped by the family's ``checkpoint_filter_fn``), exactly:
    see :func:`sofa.checkpoint.load_model_weights` (``allow_head_reset``: a classifier of another size is
    re-initialised, with a message to ``log``)."""
    from sofa.checkpoint import load_model_weights
    from sofa.models import map_checkpoint

    load_model_weights(
        model,
        map_checkpoint(dict(state_dict), model),
        source,
        allow_head_reset=allow_head_reset,
        log=log,
        checkpoint_model=checkpoint_model,
    )


def checkpoint_num_classes(name: str, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes of model ``name``'s classifier in ``state_dict`` (any layout the family maps);
    None when the checkpoint has no classifier or the model's classifier is not known."""
    from sofa.models import get_entry, list_models

    if name in list_models():
        entry = get_entry(name)
        state = entry.checkpoint_filter_fn(dict(state_dict))
        classifier = entry.pretrained_cfg.get("classifier")
    else:
        from timm.models import get_pretrained_cfg_value

        state, classifier = state_dict, get_pretrained_cfg_value(name, "classifier")
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[-1]
    weight = state.get(f"{classifier}.weight") if classifier else None
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None
