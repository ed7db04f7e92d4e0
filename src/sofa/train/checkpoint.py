"""Checkpoints: atomic files, safetensors weights with metadata, full training state, loading with clear errors.

Files of a run directory (only rank 0 writes):

* ``last.pt``           full training state (``torch.save``; load with ``weights_only=True``): model, EMA,
                        optimiser, scheduler, grad scaler, epoch/step, best metric, RNG states, config. Written
                        every epoch, every ``--save-every-steps`` and on SIGUSR1/SIGTERM.
* ``model.safetensors`` the latest weights (EMA weights in ``model_ema.safetensors``), with metadata
                        (model name, task, classes, data config, the run's config) so that ``sofa eval`` and
                        ``sofa predict`` rebuild the model from the file alone.
* ``best.safetensors``  the weights that scored best on the primary metric.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the old one:
a kill at any moment leaves either the old or the new file, never a torn one.
"""
from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sofa.train.errors import UserError

STATE_FORMAT = "sofa-train-state"
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------------ atomic files
def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


# ------------------------------------------------------------------------------------------------ weights
def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """safetensors file of ``state_dict``; ``metadata`` values are JSON-encoded under the key ``sofa``."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {"format": "pt", "sofa": json.dumps(metadata, default=_json_default)}
    data = save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def _json_default(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` from a run directory, a ``.safetensors`` file or a ``.pt`` training state.

    A run directory resolves to ``best.safetensors``, else ``model.safetensors``, else ``last.pt``.
    Plain state dicts (``.pth``/``.pt`` of other projects, also under a ``model``/``state_dict`` key) load
    with ``weights_only=True`` and empty metadata.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "model.safetensors", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{path} holds no checkpoint (best.safetensors, model.safetensors or last.pt)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise UserError(f"cannot read {path} as safetensors: {err}") from None
        return sd, json.loads(meta.get("sofa", "{}"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:300]}") from None
    if isinstance(obj, dict) and obj.get("format") == STATE_FORMAT:
        return obj["model"], dict(obj.get("metadata") or {}, config=obj.get("config"))
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a model state dict")
    return obj, {}


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classification head (from pretrained_cfg['classifier'] or get_classifier())."""
    names = set()
    cls = getattr(model, "pretrained_cfg", {}) or {}
    prefixes = cls.get("classifier")
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    sd_keys = list(model.state_dict().keys())
    for p in prefixes or []:
        names.update(k for k in sd_keys if k == p or k.startswith(p + "."))
    if not names and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module):
            ids = {id(t) for t in head.state_dict(keep_vars=True).values()}
            names.update(k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids)
    return sorted(names)


def load_model_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_head_reset: bool = False,
    log: Callable[[str], None] = print,
    checkpoint_model: str | None = None,
) -> None:
    """Load ``state_dict`` into ``model``, exactly, or fail with the mismatched keys named.

    With ``allow_head_reset`` a classifier of another size (fine-tuning on a different number of classes) is
    left at its fresh initialisation and a message says so; every other mismatch is an error.
    """
    sd = dict(state_dict)
    # checkpoints saved from DDP / torch.compile wrappers
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    head = set(classifier_keys(model))
    head_mismatch = [k for k in shape if k in head]
    if allow_head_reset and head_mismatch:
        # a head of another size: re-initialised (keep the model's own fresh head tensors)
        old = {k: tuple(sd[k].shape) for k in head_mismatch}
        for k in head:
            sd.pop(k, None)
        shape = [k for k in shape if k not in head]
        missing = sorted(set(own) - set(sd) - head)
        w = next((k for k in head_mismatch if k.endswith("weight")), head_mismatch[0])
        log(
            f"note: {source} has a classifier for {old[w][0]} classes, this run has {tuple(own[w].shape)[0]}: "
            f"head ({', '.join(sorted(head))}) re-initialised, the rest loaded"
        )
    if missing or unexpected or shape:
        def names(keys, fmt=str):
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            return ", ".join(fmt(k) for k in keys[:6]) + more

        parts = []
        if shape:
            parts.append(f"{len(shape)} with other shapes: " + names(
                shape, lambda k: f"{k} {tuple(sd[k].shape)} in checkpoint vs {tuple(own[k].shape)} in model"))
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model: {names(unexpected)}")
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        other = f" (it was saved from model {checkpoint_model!r})" if checkpoint_model and checkpoint_model != arch else ""
        raise UserError(
            f"checkpoint {source} does not fit model {arch!r}{other}: " + "; ".join(parts)
            + ". Pass the --model the checkpoint was trained with"
            + (", or --num-classes to fine-tune with a new head" if head_mismatch and not allow_head_reset else "")
        )
    model.load_state_dict(sd, strict=not (allow_head_reset and head_mismatch))


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """python, numpy, torch (and CUDA) generator states as tensors / plain containers."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except Exception:
            pass


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: no training state at {path} (expected RUN_DIR/last.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot resume from {path}: {type(err).__name__}: {str(err)[:300]}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a sofa training state (written by `sofa train`)")
    return state
