"""One registry for every model of the zoo, and its mirror in timm's registry.

A family module (``soft.py``, ``setformer.py``, ``poolformer.py``) declares each variant as a named entry
function, as timm does::

    @register_model("soft", _cfg(), _paper("tiny", normalized=False))
    def soft_tiny(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
        ...

registered under the function's name with its family, its ``pretrained_cfg`` (timm's input size / crop / mean /
std / classifier record) and the paper's numbers. :func:`create_model` builds a model by name;
:func:`register_in_timm` makes every model available to ``timm.create_model`` too, through timm's public
registry functions. timm's own models are never overwritten: a name timm already owns (timm has its own PoolFormer
port) is registered there as ``sofa_<name>``.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from torch import nn

__all__ = [
    "ModelEntry",
    "register_model",
    "create_model",
    "list_models",
    "get_entry",
    "family_of",
    "register_in_timm",
    "timm_name",
    "map_checkpoint",
]


@dataclass
class ModelEntry:
    name: str
    family: str
    fn: Callable[..., nn.Module]
    pretrained_cfg: Dict[str, Any]
    #: the papers' numbers: ``params`` (M), ``macs`` (G at 224²), ``top1`` (ImageNet-1K, %), and a ``note``
    paper: Dict[str, Any] = field(default_factory=dict)
    #: name under which the model is registered in timm (``sofa_<name>`` where timm owns ``name``)
    timm_name: Optional[str] = None

    @property
    def checkpoint_filter_fn(self) -> Callable[..., Dict]:
        """The family's ``checkpoint_filter_fn(state, model=None)``: original release (and timm port) keys →
        sofa's, sofa's own keys unchanged; given the model it also adapts tensors to it. Every family module
        defines one, timm's convention."""
        return sys.modules[self.fn.__module__].checkpoint_filter_fn


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(family: str, pretrained_cfg: Dict[str, Any], paper: Optional[Dict[str, Any]] = None):
    """Decorator: register the entry function ``fn(pretrained=False, **kwargs) -> nn.Module`` as the model named
    ``fn.__name__``, of ``family``, with its ``pretrained_cfg`` and the ``paper``'s numbers (``params``, ``macs``,
    ``top1``, ``note``)."""

    def wrap(fn):
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        cfg = dict(pretrained_cfg)
        cfg.setdefault("architecture", name)
        _REGISTRY[name] = ModelEntry(name, family, fn, cfg, dict(paper or {}))
        return fn

    return wrap


def list_models(pattern: str = "*", family: Optional[str] = None) -> List[str]:
    """Names of the registered models (sorted), optionally filtered by a glob ``pattern`` and ``family``."""
    names = [n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)]
    return sorted(names, key=_natural_key)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def get_entry(name: str) -> ModelEntry:
    if name.startswith("sofa_") and name not in _REGISTRY and name[5:] in _REGISTRY:
        name = name[5:]
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=6, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; sofa.list_models() lists all {len(_REGISTRY)} models")
    return _REGISTRY[name]


def family_of(name: str) -> Optional[str]:
    """The family of registered model ``name`` (``"soft"``, ``"lra"``, ``"text"``, ...), None if there is none."""
    try:
        return get_entry(name).family
    except ValueError:
        return None


def create_model(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None, **kwargs) -> nn.Module:
    """Build model ``name``.

    Args:
        name: a name from :func:`list_models` (a ``sofa_`` prefix, as used in timm's registry, is accepted).
        pretrained: sofa never downloads anything; ``pretrained=True`` needs ``checkpoint_path``.
        checkpoint_path: an original checkpoint (SOFT's or PoolFormer's layout, bare or wrapped in
            ``state_dict`` / ``model`` / ``state_dict_ema``, with or without a ``module.`` prefix), a safetensors
            file written by ``sofa convert`` / ``sofa train``, a training state ``last.pt``, or a run directory
            of ``sofa train`` (its best weights); see :func:`sofa.checkpoint.read_checkpoint`. Without
            ``num_classes`` the model gets the checkpoint's; with another one the classifier is replaced.
        **kwargs: ``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``img_size``,
            ``features_only``, ``out_indices`` and the family's architecture arguments.
    """
    return get_entry(name).fn(pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)


def map_checkpoint(state: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """``state`` in sofa's layout for ``model``: a model of sofa's zoo (by ``pretrained_cfg['architecture']``)
    maps it through its family's ``checkpoint_filter_fn`` (original release layouts → sofa's keys, tensors
    adapted to the model); other models (timm's, task models) get it unchanged."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    try:
        entry = get_entry(arch) if arch else None
    except ValueError:
        entry = None
    if entry is None:
        return state
    filter_fn = entry.checkpoint_filter_fn
    return filter_fn(filter_fn(state), model)


def timm_name(name: str) -> str:
    """The name of sofa model ``name`` in timm's registry."""
    entry = get_entry(name)
    return entry.timm_name or name


#: the module timm's registry files sofa's entry functions under: timm's ``register_model`` reads the
#: ``default_cfgs`` of an entry function's module, so a module made here holds the functions and their cfgs
TIMM_MODULE = "sofa.models._timm_entrypoints"


def _registered_in_timm(tname: str) -> Optional[Callable[..., nn.Module]]:
    """timm's entry function for ``tname``, or None where timm has none."""
    import timm.models

    return timm.models.model_entrypoint(tname) if timm.models.is_model(tname) else None


def register_in_timm() -> List[str]:
    """Register every sofa model in timm's registry (idempotent). Returns the timm names."""
    import timm.models

    mod = sys.modules.get(TIMM_MODULE)
    if mod is None:
        mod = types.ModuleType(TIMM_MODULE)
        mod.default_cfgs = {}
        sys.modules[TIMM_MODULE] = mod
    names = []
    for name, entry in _REGISTRY.items():
        if entry.timm_name is not None and _registered_in_timm(entry.timm_name) is getattr(mod, entry.timm_name, None):
            names.append(entry.timm_name)
            continue
        tname = name
        owner = _registered_in_timm(name)
        if owner is not None and getattr(owner, "__module__", "") != TIMM_MODULE:
            tname = "sofa_" + name  # timm owns this name: never overwrite it
        fn = _timm_entry(entry, tname)
        cfg = dict(entry.pretrained_cfg)
        cfg["architecture"] = tname
        mod.default_cfgs[tname] = cfg
        setattr(mod, tname, fn)
        timm.models.register_model(fn)
        entry.timm_name = tname
        names.append(tname)
    return names


def _timm_entry(entry: ModelEntry, tname: str):
    def fn(pretrained: bool = False, **kwargs):
        # timm passes its own bookkeeping; sofa's entry builds with its own pretrained_cfg
        kwargs.pop("pretrained_cfg", None)
        overlay = kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        if pretrained:
            raise ValueError(
                f"{tname}: sofa downloads no weights; build with pretrained=False and pass checkpoint_path= "
                f"(timm.create_model loads it) or use sofa.create_model('{entry.name}', checkpoint_path=...)"
            )
        return entry.fn(pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)

    fn.__name__ = tname
    fn.__qualname__ = tname
    fn.__module__ = TIMM_MODULE
    fn.__doc__ = f"sofa model {entry.name!r} ({entry.family})."
    return fn
