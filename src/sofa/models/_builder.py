"""The one path every family's entry function takes: kwargs → model (→ checkpoint → features wrapper)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from torch import nn

from sofa.checkpoint import CheckpointError, load_model_weights, read_checkpoint

__all__ = ["build_model"]


def build_model(
    model_cls: Callable[..., nn.Module],
    name: str,
    pretrained_cfg: Dict[str, Any],
    *,
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
    """Build ``model_cls(**kwargs)`` the timm way and load ``checkpoint_path`` into it.

    Args:
        filter_fn: ``filter_fn(state, model=None)`` maps an original checkpoint to sofa's keys (sofa's own keys
            pass through); given the model it also adapts tensors to it (e.g. resamples position embeddings).
        infer_kwargs: ``infer_kwargs(name, state, kwargs, user_keys)`` fills architecture arguments the user left
            out (not in ``user_keys``) from the checkpoint (e.g. depths of the released 20-block SOFT-Small).
        user_keys: the kwargs the user gave (the rest are the variant's defaults).
        features_kwargs: ``features_kwargs(kwargs)`` adjusts kwargs for ``features_only`` (e.g. dense output norms).
        feature_keys: keys that exist only in dense mode (output norms): a classification checkpoint may lack them
            and a dense checkpoint may carry them.
    """
    from timm.models import build_model_with_cfg
    from timm.models._features import FeatureGetterNet
    from timm.models._builder import pretrained_cfg_for_features

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
    model = build_model_with_cfg(
        model_cls, name, pretrained=False, pretrained_cfg=dict(pretrained_cfg), pretrained_cfg_overlay=overlay,
        **kwargs
    )
    if state is not None:
        state = filter_fn(state, model)
        ckpt_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        drop = user_num_classes is not None and user_num_classes != ckpt_classes
        head_keys = _head_keys(model) if features_only else set()
        try:
            load_model_weights(
                model, state, source, allow_head_reset=drop and not features_only,
                checkpoint_model=meta.get("model"), allow_missing=feature_keys, allow_unexpected=feature_keys,
                ignore=lambda k: k in head_keys or (features_only and k.startswith(("head.", "norm."))),
            )
        except CheckpointError as err:
            if not features_only and any(feature_keys(k) for k in state) and "norm.weight" not in state:
                raise CheckpointError(f"{err} (a dense backbone checkpoint, with per-stage output norms and no "
                                      f"classifier: pass features_only=True)") from None
            raise
    if features_only:
        model = FeatureGetterNet(model, out_indices=list(out_indices), output_fmt="NCHW")
        model.pretrained_cfg = pretrained_cfg_for_features(model.model.pretrained_cfg)
        model.default_cfg = model.pretrained_cfg
    return model


def _head_keys(model: nn.Module) -> set:
    """Keys of the classifier and final norm, which a features-only model drops."""
    keys = set()
    for prefix in ("head.", "norm."):
        keys |= {k for k in model.state_dict() if k.startswith(prefix)}
    return keys

