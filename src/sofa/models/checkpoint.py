"""Reading, converting, checking and writing checkpoints.

Two kinds of files load into a sofa model:

* an original checkpoint of a released project (SOFT's or PoolFormer's layout), pickled by ``torch.save``: read
  with ``weights_only=True``; the state dict may be bare or wrapped in ``state_dict`` / ``model`` /
  ``state_dict_ema`` (or ``model_ema``), with or without a ``module.`` prefix (DataParallel / DDP);
* a safetensors file in sofa's own layout (``sofa convert`` writes them; :func:`save_safetensors`).

The family's ``checkpoint_filter_fn`` maps original keys to sofa's; sofa's own keys pass through unchanged.
:func:`load_into` then insists on an exact match: every missing, unexpected or wrongly shaped key is named in the
error. One exception, on request: a classifier of another size is dropped, with a warning, when the user asked
for a different ``num_classes``.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = ["read_checkpoint", "unwrap_state_dict", "load_into", "save_safetensors", "CheckpointError"]

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names the keys."""


def read_checkpoint(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read ``path`` → (state dict, metadata). Safetensors by extension or magic; anything else is read with
    ``torch.load(weights_only=True)`` and unwrapped (:func:`unwrap_state_dict`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        from safetensors import safe_open

        state, meta = {}, {}
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                state[k] = f.get_tensor(k)
        return unwrap_state_dict(state), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(
            f"could not read {path} with torch.load(weights_only=True): {err}. sofa reads only plain tensors from "
            f"pickled checkpoints; re-save the state dict alone (torch.save(ckpt['model'], ...)) if it holds objects"
        ) from err
    return unwrap_state_dict(obj), {}


def _is_safetensors(path: str) -> bool:
    if path.endswith(".safetensors"):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def unwrap_state_dict(obj: Any, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object and strip a ``module.`` prefix."""
    seen = 0
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        order = ("state_dict_ema", "model_ema") + WRAPPER_KEYS if use_ema else WRAPPER_KEYS
        for key in order:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            raise CheckpointError(
                f"no state dict found in the checkpoint: top-level keys {sorted(map(str, obj))[:12]}; expected "
                f"tensors or one of the wrappers {list(WRAPPER_KEYS)}"
            )
        seen += 1
        if seen > 4:
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_into(
    model: nn.Module,
    state: Dict[str, torch.Tensor],
    *,
    classifier: Iterable[str] = ("head",),
    drop_classifier: bool = False,
    allow_missing: Callable[[str], bool] | None = None,
    allow_unexpected: Callable[[str], bool] | None = None,
    ignore: Callable[[str], bool] | None = None,
    source: str = "checkpoint",
) -> None:
    """Load ``state`` (already in sofa's layout) into ``model``, exactly.

    Args:
        classifier: module names of the classifier (their ``.weight``/``.bias``).
        drop_classifier: the user asked for a num_classes different from the checkpoint's: classifier tensors of
            another shape are dropped with a warning instead of failing.
        allow_missing / allow_unexpected: predicates for keys that may be absent / extra (e.g. a dense
            backbone's fresh output norms); they are reported in a warning.
        ignore: keys skipped silently on both sides (e.g. the classifier of a features-only model).
    """
    own = model.state_dict()
    state = dict(state)
    if ignore is not None:
        own = {k: v for k, v in own.items() if not ignore(k)}
        state = {k: v for k, v in state.items() if not ignore(k)}
    prefixes = tuple(c + "." for c in classifier)
    wrong = {}
    for k, v in list(state.items()):
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            if k.startswith(prefixes) and drop_classifier:
                warnings.warn(
                    f"{source}: classifier {k} {tuple(v.shape)} dropped (the model has {tuple(own[k].shape)} for the "
                    f"num_classes you asked for); it stays freshly initialised",
                    stacklevel=3,
                )
                del state[k]
                continue
            wrong[k] = (tuple(v.shape), tuple(own[k].shape))
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    soft_missing = [k for k in missing if allow_missing is not None and allow_missing(k)]
    soft_unexpected = [k for k in unexpected if allow_unexpected is not None and allow_unexpected(k)]
    missing = [k for k in missing if k not in soft_missing]
    unexpected = [k for k in unexpected if k not in soft_unexpected]
    if drop_classifier:  # a classifier the checkpoint lacks / the model lacks is fine when the user asked for it
        gone = [k for k in unexpected if k.startswith(prefixes)]
        new = [k for k in missing if k.startswith(prefixes)]
        if gone:
            warnings.warn(f"{source}: classifier {', '.join(gone)} dropped (the model has no classifier of that "
                          f"size for the num_classes you asked for)", stacklevel=3)
        if new:
            warnings.warn(f"{source}: the checkpoint has no classifier; {', '.join(new)} freshly initialised",
                          stacklevel=3)
        missing = [k for k in missing if not k.startswith(prefixes)]
        unexpected = [k for k in unexpected if not k.startswith(prefixes)]
    if missing or unexpected or wrong:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if wrong:
            parts.append(
                "wrong shapes: " + "; ".join(f"{k} checkpoint {a} vs model {b}" for k, (a, b) in list(wrong.items())[:12])
                + (f" (+{len(wrong) - 12} more)" if len(wrong) > 12 else "")
            )
        if wrong and any(k.startswith(prefixes) for k in wrong):
            parts.append("(pass num_classes=N to replace the classifier)")
        raise CheckpointError("\n  ".join(parts))
    if soft_missing or soft_unexpected:
        msg = []
        if soft_missing:
            msg.append(f"not in the checkpoint, left at their initial values: {_names(soft_missing)}")
        if soft_unexpected:
            msg.append(f"in the checkpoint but not used by this model: {_names(soft_unexpected)}")
        warnings.warn(f"{source}: " + "; ".join(msg), stacklevel=3)
    state = {k: v for k, v in state.items() if k in own}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


def _names(keys, limit: int = 12) -> str:
    keys = list(keys)
    s = ", ".join(keys[:limit])
    return s + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def save_safetensors(model_or_state, path: str | os.PathLike, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write a model's (or a state dict's) tensors to ``path`` as safetensors, with JSON-able ``metadata``."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": "pt", "sofa": "1"}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    save_file(state, os.fspath(path), metadata=meta)
