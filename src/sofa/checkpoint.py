"""Checkpoints: one reader, one exact-fit loader, one writer, atomic files, the training state.

Files sofa reads (:func:`read_checkpoint` → ``(state dict, metadata dict)``):

* a **run directory** of ``sofa train``: ``best.safetensors`` (the weights that scored best), else
  ``model.safetensors`` (the final weights), else ``last.pt``; ``weights="best" | "final" | "ema"`` picks one
  (:func:`resolve_checkpoint`);
* a **safetensors** file (by extension or by its header): sofa's metadata is one JSON object under the key
  ``sofa`` (model name, task, num_classes, classes, data config, the run's config, ...). Files of older sofa
  versions still read: ``sofa="1"`` with the other keys JSON-encoded one by one (older ``sofa convert``), and
  safetensors without sofa metadata (timm's, other projects') read with empty metadata;
* a **training state** ``last.pt`` (``format: sofa-train-state``): its model weights, and its metadata with the
  run's config;
* a **pickled checkpoint** of another project (an original release ``.pth``): read with
  ``torch.load(weights_only=True)`` only; the state dict may be bare or wrapped in ``state_dict`` / ``model`` /
  ``state_dict_ema`` / ``model_ema``, with or without a ``module.`` / ``_orig_mod.`` prefix. A file holding
  other objects than tensors and plain containers is refused for safety, naming those objects. Its keys stay
  in the original layout: the model family's ``checkpoint_filter_fn`` maps them (``sofa.create_model`` and
  the command line do that).

:func:`load_model_weights` then loads a state dict into a model exactly: every missing, unexpected or wrongly
shaped key is named in a :class:`CheckpointError`. One exception, on request (``allow_head_reset``): a
classifier of another size (fine-tuning on another number of classes) stays freshly initialised, and a
message says so.

Every file is written to a temporary name in the same folder (created with the user's umask, like any new
file), flushed to disk and renamed over the old one: a kill at any moment leaves the old or the new file, never
a torn one. Write errors (a full disk, a read-only folder) propagate unchanged, with the temporary file removed.

Files of a run directory (only rank 0 writes): ``last.pt`` the full training state (``torch.save``, read with
``weights_only=True``): model, EMA, optimiser, scheduler, grad scaler, epoch/step, best metric, RNG states,
config; ``model.safetensors`` the latest weights (EMA weights in ``model_ema.safetensors``); ``best.safetensors``.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import secrets
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np
import torch
from torch import nn

from sofa.errors import UserError

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "resolve_checkpoint",
    "describe_weights",
    "unwrap_state_dict",
    "load_model_weights",
    "classifier_keys",
    "save_weights",
    "atomic_write",
    "atomic_write_text",
    "atomic_torch_save",
    "load_training_state",
    "rng_state",
    "set_rng_state",
    "RUN_WEIGHTS",
]

STATE_FORMAT = "sofa-train-state"
STATE_VERSION = 1

#: ``weights=`` choices for a run directory → the file holding them
RUN_WEIGHTS = {"best": "best.safetensors", "final": "model.safetensors", "ema": "model_ema.safetensors"}
#: what a run directory resolves to when no ``weights`` is asked for, in order
RUN_DEFAULT_ORDER = ("best.safetensors", "model.safetensors", "last.pt")

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why (naming the keys).

    A :class:`~sofa.errors.UserError` (the command line prints it on one line, no traceback) and a
    ``ValueError`` (what a library caller catches for a bad argument).
    """


# ------------------------------------------------------------------------------------------------ atomic files
def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` through ``write(fileobj)``: a temp file in the same folder, fsync, rename over ``path``.

    The file gets the permissions of any new file (``0o666`` less the umask). Any error, ``OSError`` included
    (``ENOSPC``, ``EROFS``, ``EACCES``), propagates unchanged after the temp file is removed; ``path`` is then
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:  # mode 0o666 through open(2): the kernel applies the umask (and a default ACL), as for any new file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
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


# ------------------------------------------------------------------------------------------------ writing
def save_weights(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
    """A safetensors file of ``state_dict``, written atomically; ``metadata`` is stored as one JSON object under
    the key ``sofa`` (what :func:`read_checkpoint` returns as the metadata)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {"format": "pt", "sofa": json.dumps(dict(metadata or {}), default=_json_default)}
    data = save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))


def _json_default(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return str(o)


# ------------------------------------------------------------------------------------------------ reading
def resolve_checkpoint(path: str | os.PathLike, weights: str | None = None) -> Path:
    """The file ``path`` names: itself, or for a run directory the weights asked for (``best`` / ``final`` /
    ``ema``; by default ``best.safetensors``, else ``model.safetensors``, else ``last.pt``)."""
    path = Path(path)
    if weights is not None and weights not in RUN_WEIGHTS:
        raise CheckpointError(f"weights must be one of {', '.join(RUN_WEIGHTS)}, got {weights!r}")
    if path.is_dir():
        if weights is not None:
            found = path / RUN_WEIGHTS[weights]
            if not found.is_file():
                have = [n for n in (*RUN_WEIGHTS.values(), "last.pt") if (path / n).is_file()]
                raise CheckpointError(
                    f"{path} has no {weights} weights ({found.name}); it holds "
                    f"{', '.join(have) if have else 'no checkpoint'}"
                )
            return found
        for name in RUN_DEFAULT_ORDER:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint (best.safetensors, model.safetensors or last.pt)")
    if weights is not None and path.is_file():
        raise CheckpointError(f"choosing {weights} weights needs a run directory; {path} is a file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    return path


def describe_weights(path: str | os.PathLike, metadata: Mapping[str, Any]) -> str:
    """Which weights a file of a run holds, in words: ``best weights (top1 91.2 at epoch 7)``, ``final
    weights (epoch 10)``, ...; the file name for other files."""
    name = Path(path).name
    epoch = metadata.get("epoch")
    at = f" (epoch {epoch})" if epoch is not None else ""
    if name == RUN_WEIGHTS["best"]:
        best = metadata.get("best") or {}
        if best.get("value") is not None:
            ema = ", EMA" if best.get("which") == "ema" else ""
            return f"best weights ({best.get('metric')} {best['value']:.4g} at epoch {best.get('epoch')}{ema})"
        return "best weights" + at
    if name == RUN_WEIGHTS["final"]:
        return "final weights" + at
    if name == RUN_WEIGHTS["ema"]:
        return "EMA weights" + at
    if name == "last.pt" and metadata.get("config") is not None:
        return "final weights of the training state" + at
    return name


def read_checkpoint(
    path: str | os.PathLike, weights: str | None = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state dict, metadata)`` of a run directory, a safetensors file, a training state or a pickled
    checkpoint (see the module's notes). Raises :class:`CheckpointError` saying what is wrong with the file."""
    path = resolve_checkpoint(path, weights)
    if _is_safetensors(path):
        return _read_safetensors(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == STATE_FORMAT:
        meta = dict(obj.get("metadata") or {})
        meta["config"] = obj.get("config")
        if obj.get("epoch") is not None:
            meta.setdefault("epoch", obj["epoch"])
        return unwrap_state_dict(obj["model"], str(path)), meta
    return unwrap_state_dict(obj, str(path)), {}


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors' errors are of several types; all mean the same here
        size = path.stat().st_size
        why = "it is empty" if size == 0 else f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        raise CheckpointError(
            f"cannot read {path} as safetensors ({why}): the file is truncated, corrupted or not a safetensors file"
        ) from None
    return unwrap_state_dict(state, str(path)), _decode_metadata(raw)


def _decode_metadata(raw: Mapping[str, str]) -> Dict[str, Any]:
    """sofa's metadata from a safetensors header: ``sofa`` = a JSON object; or ``sofa="1"`` with the other
    keys JSON-encoded one by one (plain strings stored as they are); no ``sofa`` key: not sofa's, empty."""
    value = raw.get("sofa")
    if value is None:
        return {}
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        return decoded
    meta: Dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("sofa", "format"):
            continue
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return meta


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, its failures said as what they mean for the user."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        with warnings.catch_warnings():  # protocol notes of the weights-only unpickler are not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - translated below, torch's advice is not relayed
        text = str(err)
        unsafe = _GLOBAL.findall(text)
        if not unsafe:
            try:
                unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            except Exception:  # noqa: BLE001 - only a zip-format file can be listed
                unsafe = []
        if unsafe:
            raise CheckpointError(
                f"{path} holds objects that are not tensors ({', '.join(sorted(set(unsafe))[:6])}): sofa refuses "
                f"them for safety, since loading them would run code from the file. Use a file that holds only "
                f"tensors: a state dict saved alone (torch.save(model.state_dict(), ...)) or safetensors"
            ) from None
        with open(path, "rb") as f:
            head = f.read(4)
        if isinstance(err, EOFError) or (head.startswith(b"PK") and "central directory" in text):
            why = "it ends too early: the file is truncated or corrupted (download or copy it again)"
        elif isinstance(err, (RuntimeError, OSError)) and "zip archive" in text:
            why = "its archive is corrupted (download or copy it again)"
        else:
            detail = _UNPICKLER.search(text)
            detail = (
                detail.group(1).strip()
                if detail
                else f"{type(err).__name__}: {text.splitlines()[0][:120] if text else ''}"
            )
            why = f"it is neither a safetensors file nor a PyTorch checkpoint ({detail})"
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint", use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (see :data:`WRAPPER_KEYS`), without a ``module.`` /
    ``_orig_mod.`` prefix."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        order = ("state_dict_ema", "model_ema") + WRAPPER_KEYS if use_ema else WRAPPER_KEYS
        inner = next((obj[k] for k in order if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: no state dict found in the checkpoint: top-level keys {sorted(map(str, obj))[:12]}; "
                f"expected tensors or one of the wrappers {list(WRAPPER_KEYS)}"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


# ------------------------------------------------------------------------------------------------ loading
def classifier_keys(model: nn.Module) -> Callable[[str], bool]:
    """A predicate: is this state-dict key part of the model's classifier? From ``pretrained_cfg['classifier']``
    (also for a model built without one, ``num_classes=0``) and ``get_classifier()``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    prefixes = cfg.get("classifier") or ()
    prefixes = tuple(p + "." for p in ((prefixes,) if isinstance(prefixes, str) else prefixes))
    names: set = set()
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module):
            ids = {id(t) for t in head.state_dict(keep_vars=True).values()}
            names = {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids}
    return lambda k: k in names or (bool(prefixes) and k.startswith(prefixes))


def load_model_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    allow_head_reset: bool = False,
    log: Callable[[str], None] | None = None,
    checkpoint_model: str | None = None,
    *,
    allow_missing: Callable[[str], bool] | None = None,
    allow_unexpected: Callable[[str], bool] | None = None,
    ignore: Callable[[str], bool] | None = None,
) -> None:
    """Load ``state_dict`` (in the model's own layout) into ``model``, exactly, or raise :class:`CheckpointError`
    naming every missing, unexpected and wrongly shaped key.

    Args:
        source: how the message names the checkpoint (``checkpoint runs/x/best.safetensors``).
        allow_head_reset: a classifier of another size, or absent on one side (fine-tuning on another number of
            classes), stays freshly initialised with a message instead of failing.
        log: where messages go (a run's log); by default ``warnings.warn``.
        checkpoint_model: the model the checkpoint was saved from (its metadata), named in the error.
        allow_missing / allow_unexpected: keys that may be absent / extra (e.g. a dense backbone's fresh output
            norms); they are reported in a message.
        ignore: keys skipped silently on both sides (e.g. the classifier of a features-only model).
    """

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            warnings.warn(msg, stacklevel=3)

    own = model.state_dict()
    state = dict(state_dict)
    if ignore is not None:
        own = {k: v for k, v in own.items() if not ignore(k)}
        state = {k: v for k, v in state.items() if not ignore(k)}
    is_head = classifier_keys(model)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    soft_missing = [k for k in missing if allow_missing is not None and allow_missing(k)]
    soft_unexpected = [k for k in unexpected if allow_unexpected is not None and allow_unexpected(k)]
    missing = [k for k in missing if k not in soft_missing]
    unexpected = [k for k in unexpected if k not in soft_unexpected]
    head_wrong = [k for k in wrong if is_head(k)]
    if allow_head_reset:
        head_gone = [k for k in unexpected if is_head(k)]
        head_new = [k for k in missing if is_head(k)]
        if head_wrong:
            w = next((k for k in head_wrong if k.endswith("weight")), head_wrong[0])
            say(
                f"{source} has a classifier for {tuple(state[w].shape)[0]} classes, the model has "
                f"{tuple(own[w].shape)[0]}: {', '.join(sorted(k for k in own if is_head(k)))} re-initialised, "
                f"the rest loaded"
            )
        if head_gone:
            say(f"{source}: classifier {', '.join(head_gone)} dropped (the model has no classifier)")
        if head_new:
            say(f"{source} has no classifier: {', '.join(head_new)} freshly initialised")
        for k in head_wrong + head_gone:
            state.pop(k)
        wrong = [k for k in wrong if k not in head_wrong]
        missing = [k for k in missing if k not in head_new]
        unexpected = [k for k in unexpected if k not in head_gone]
        head_wrong = []
    if missing or unexpected or wrong:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        other = (
            f" (it was saved from model {checkpoint_model!r})" if checkpoint_model and checkpoint_model != arch else ""
        )
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if wrong:
            parts.append(
                f"wrong shapes ({len(wrong)}): "
                + _names([f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong], 6)
            )
        hint = ""
        if head_wrong:
            hint = "; the classifier has another size: ask for that num_classes, or allow a new head (num_classes=N)"
        raise CheckpointError(f"{source} does not fit model {arch!r}{other}: " + "; ".join(parts) + hint)
    if soft_missing or soft_unexpected:
        msg = []
        if soft_missing:
            msg.append(f"not in the checkpoint, left at their initial values: {_names(soft_missing)}")
        if soft_unexpected:
            msg.append(f"in the checkpoint but not used by this model: {_names(soft_unexpected)}")
        say(f"{source}: " + "; ".join(msg))
    state = {k: v for k, v in state.items() if k in own}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


def _names(keys, limit: int = 12) -> str:
    keys = list(keys)
    s = ", ".join(keys[:limit])
    return s + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


# ------------------------------------------------------------------------------------------------ training state
def rng_state() -> dict[str, Any]:
    """python, numpy, torch (and CUDA) generator states as tensors / plain containers."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
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
    """The full training state of a run (``RUN/last.pt`` or the file), for ``--resume``."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: no training state at {path} (expected RUN_DIR/last.pt)")
    try:
        state = _torch_load(path)
    except CheckpointError as err:
        raise UserError(f"cannot resume: {err}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a sofa training state (written by `sofa train`)")
    return state
