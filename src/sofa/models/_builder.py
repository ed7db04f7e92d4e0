"""The one path every family's entry function takes: kwargs → model (→ checkpoint → features wrapper)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from torch import nn

from sofa.checkpoint import CheckpointError, load_model_weights, read_checkpoint

__all__ = ["build_model_with_checkpoint"]


def build_model_with_checkpoint(
    model_cls: Callable[..., nn.Module],
    name: str,
    pretrained_cfg: Dict[str, Any],
    *,
    pretrained: bool = False,
    filter_fn: Callable[..., Dict],
    infer_kwargs: Optional[Callable[[str, Dict, Dict, set], Dict]] = None,
    user_keys: Sequence[str] = (),
    features_kwargs: Optional[Callable[[Dict], Dict]] = None,
    feature_keys: Callable[[str], bool] = lambda k: False,
    checkpoint_path: Optional[str] = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    feature_cls: str = "getter",
    pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
    **kwargs,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` with timm's ``build_model_with_cfg`` and load ``checkpoint_path`` into it
    (before a ``features_only`` model is wrapped, so the checkpoint is checked against the whole backbone).

    Args:
        pretrained: sofa never downloads weights: ``pretrained=True`` needs ``checkpoint_path``.
        filter_fn: ``filter_fn(state, model=None)`` maps an original checkpoint to sofa's keys (sofa's own keys
            pass through); given the model it also adapts tensors to it (e.g. resamples position embeddings).
        infer_kwargs: ``infer_kwargs(name, state, kwargs, user_keys)`` fills architecture arguments the user left
            out (not in ``user_keys``) from the checkpoint (e.g. depths of the released 20-block SOFT-Small).
        user_keys: the kwargs the user gave (the rest are the variant's defaults).
        features_kwargs: ``features_kwargs(kwargs)`` adjusts kwargs for ``features_only`` (e.g. dense output norms).
        feature_keys: keys that exist only in dense mode (output norms): a classification checkpoint may lack them
            and a dense checkpoint may carry them.
    """
    if pretrained and checkpoint_path is None:
        raise ValueError(
            f"{name}: sofa downloads no weights; pass checkpoint_path= (an original release .pth or a "
            f"safetensors file from `sofa convert`)"
        )
    overlay = dict(pretrained_cfg_overlay or {})
    img_size = kwargs.get("img_size")
    if img_size is not None:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        overlay.setdefault("input_size", (kwargs.get("in_chans", 3), *hw))
    user_num_classes = kwargs.get("num_classes")
    state = None
    source = "checkpoint"
    if checkpoint_path is not None:
        source = f"checkpoint {checkpoint_path}"
        state, meta = read_checkpoint(checkpoint_path)  # a file or a run directory
        state = filter_fn(state)
        ckpt_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        if user_num_classes is None and not features_only:
            kwargs["num_classes"] = ckpt_classes
        if infer_kwargs is not None:
            kwargs = infer_kwargs(name, state, kwargs, set(user_keys))
    if features_only:
        kwargs = features_kwargs(kwargs) if features_kwargs is not None else kwargs
        kwargs.setdefault("num_classes", 0)
    cfg = resolve_pretrained_cfg(name, pretrained_cfg=dict(pretrained_cfg), pretrained_cfg_overlay=overlay).to_dict()

    def build_and_load(**model_kwargs) -> nn.Module:
        # build_model_with_cfg calls this, then wraps the model for features_only: the checkpoint meets the whole
        # backbone, with the pretrained_cfg (classifier, architecture) the loader reads and the build sets anyway
        model = model_cls(**model_kwargs)
        if state is not None:
            model.pretrained_cfg = cfg
            _load(model, filter_fn(state, model), meta, source, user_num_classes, features_only, feature_keys)
        return model

    feature_cfg = dict(feature_cls=feature_cls, out_indices=list(out_indices), output_fmt="NCHW")
    return build_model_with_cfg(
        build_and_load,
        name,
        pretrained=False,
        pretrained_cfg=cfg,
        features_only=features_only,
        feature_cfg=feature_cfg if features_only else None,
        **kwargs,
    )


def _load(
    model: nn.Module,
    state: Dict[str, Any],
    meta: Dict[str, Any],
    source: str,
    user_num_classes: Optional[int],
    features_only: bool,
    feature_keys: Callable[[str], bool],
) -> None:
    """Load a checkpoint (already in the model's layout) strictly, with the exceptions the build allows: a new
    classifier where the user asked for another number of classes; no classifier or final norm in a features-only
    model; the dense output norms (``feature_keys``) either way."""
    ckpt_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    drop = user_num_classes is not None and user_num_classes != ckpt_classes
    head_keys = _head_keys(model) if features_only else set()
    try:
        load_model_weights(
            model,
            state,
            source,
            allow_head_reset=drop and not features_only,
            checkpoint_model=meta.get("model"),
            allow_missing=feature_keys,
            allow_unexpected=feature_keys,
            ignore=lambda k: k in head_keys or (features_only and k.startswith(("head.", "norm."))),
        )
    except CheckpointError as err:
        if not features_only and any(feature_keys(k) for k in state) and "norm.weight" not in state:
            raise CheckpointError(
                f"{err} (a dense backbone checkpoint, with per-stage output norms and no "
                f"classifier: pass features_only=True)"
            ) from None
        raise


def _head_keys(model: nn.Module) -> set:
    """Keys of the classifier and final norm, which a features-only model drops."""
    keys = set()
    for prefix in ("head.", "norm."):
        keys |= {k for k in model.state_dict() if k.startswith(prefix)}
    return keys
