"""PoolFormer v1 (Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022) and its hybrids.

Faithful to the released code (sail-sg/poolformer): pooling mixer ``AvgPool(3, 1, 1, count_include_pad=False)(x)
− x``, GroupNorm with one group (eps 1e-5), LayerScale on both branches, stem Conv 7×7 s4 p2, downsampling Conv
3×3 s2 p1, head GroupNorm → global average → Linear; in dense mode (``features_only=True``) each stage output goes
through its own GroupNorm, as the released detection / segmentation backbones do. Released checkpoints (bare or
wrapped, classification or dense) load through :func:`checkpoint_filter_fn`.

timm has its own PoolFormer port under the same names, whose outputs differ from the release (it pools before a
LayerNorm head); in timm's registry these models are therefore ``sofa_poolformer_*``.

Beyond the release: the identity-mixer ablation and hybrids with another mixer in stages 3–4 (softmax attention:
the paper's 81.0% [Pool, Pool, Attention, Attention] model; SOFT; SeT). Any other per-stage combination:
``create_model("poolformer_s12", token_mixers=("pool", "pool", "set", "attn"))``.
"""

from __future__ import annotations

import re
import warnings
from typing import Dict

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sofa.models._builder import build_model_with_checkpoint
from sofa.models.metaformer import MetaFormer
from sofa.models.registry import register_model

__all__ = ["PoolFormer", "VARIANTS", "HYBRID_MIXERS", "checkpoint_filter_fn"]

# ---------------------------------------------------------------------------------------------------- variants
#  name              depths          dims                  LayerScale  crop   paper: params(M) MACs(G) top-1
VARIANTS = {
    "s12": dict(
        depths=(2, 2, 6, 2),
        dims=(64, 128, 320, 512),
        ls=1e-5,
        crop=0.9,
        params=11.9,
        macs=1.8,
        top1=77.2,
        drop_path=0.1,
    ),
    "s24": dict(
        depths=(4, 4, 12, 4),
        dims=(64, 128, 320, 512),
        ls=1e-5,
        crop=0.9,
        params=21.4,
        macs=3.4,
        top1=80.3,
        drop_path=0.1,
    ),
    "s36": dict(
        depths=(6, 6, 18, 6),
        dims=(64, 128, 320, 512),
        ls=1e-6,
        crop=0.9,
        params=30.8,
        macs=5.0,
        top1=81.4,
        drop_path=0.2,
    ),
    "m36": dict(
        depths=(6, 6, 18, 6),
        dims=(96, 192, 384, 768),
        ls=1e-6,
        crop=0.95,
        params=56.1,
        macs=8.8,
        top1=82.1,
        drop_path=0.3,
    ),
    "m48": dict(
        depths=(8, 8, 24, 8),
        dims=(96, 192, 384, 768),
        ls=1e-6,
        crop=0.95,
        params=73.4,
        macs=11.6,
        top1=82.5,
        drop_path=0.4,
    ),
    # not in the paper: a tiny configuration (the reference fixtures' shape) for tests and CPU experiments
    "mini": dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), ls=1e-5, crop=0.9),
}


def _attn(dim: int) -> Dict:
    return {"kind": "attn", "num_heads": max(1, dim // 32), "pos_embed": True}


def _soft(dim: int, stage: int) -> Dict:
    # SOFT's stage-3/4 settings: landmark stride 2 at stride 16 and 1 at stride 32 (49 landmarks at 224²), capped
    # at 49 landmarks so that the cost stays linear at any input size; depthwise conv 3×3 on V.
    return {
        "kind": "soft",
        "num_heads": max(1, dim // 32),
        "landmark_stride": 2 if stage == 2 else 1,
        "dwconv_kernel": 3,
        "max_landmarks": 49,
    }


def _set(dim: int) -> Dict:
    return {"kind": "set", "num_heads": max(1, dim // 32), "num_refs": 49}


#: hybrids of PoolFormer-S12: a different mixer in stages 3–4 (paper numbers where the paper has the model)
HYBRID_MIXERS = {
    "identity": dict(
        mixers=lambda dims: ("identity",) * 4, params=11.9, macs=None, top1=74.3, note="identity-mixer ablation"
    ),
    "attn": dict(
        mixers=lambda dims: ("pool", "pool", _attn(dims[2]), _attn(dims[3])),
        params=16.5,
        macs=2.5,
        top1=81.0,
        note="[Pool, Pool, Attention, Attention]",
    ),
    "soft": dict(
        mixers=lambda dims: ("pool", "pool", _soft(dims[2], 2), _soft(dims[3], 3)),
        note="[Pool, Pool, SOFT, SOFT] (sofa's)",
    ),
    "set": dict(
        mixers=lambda dims: ("pool", "pool", _set(dims[2]), _set(dims[3])), note="[Pool, Pool, SeT, SeT] (sofa's)"
    ),
}


class PoolFormer(MetaFormer):
    """PoolFormer v1 on the MetaFormer builder (GroupNorm(1) blocks on (B, C, H, W) maps)."""

    def __init__(
        self,
        depths=(2, 2, 6, 2),
        dims=(64, 128, 320, 512),
        token_mixers="pool",
        mlp_ratios=4.0,
        layer_scale_init_value=1e-5,
        **kwargs,
    ):
        kwargs.setdefault("norm", "groupnorm")
        kwargs.setdefault("stem", "poolformer")
        super().__init__(
            depths=depths,
            dims=dims,
            token_mixers=token_mixers,
            mlp_ratios=mlp_ratios,
            layer_scale_init_value=layer_scale_init_value,
            **kwargs,
        )


# ---------------------------------------------------------------------------------------------------- checkpoints
def is_original(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("network.", "patch_embed.")) for k in state)


def is_timm(state: Dict[str, torch.Tensor]) -> bool:
    """timm's PoolFormer port (``timm.create_model("poolformer_s12")`` and its checkpoints)."""
    return any(k.endswith((".layer_scale1.scale", ".layer_scale2.scale")) or k.startswith("head.fc.") for k in state)


# timm's port → sofa: LayerScale vectors are modules there, and the final norm sits inside the head
_TIMM_NAMES = {
    ".layer_scale1.scale": ".layer_scale1",
    ".layer_scale2.scale": ".layer_scale2",
    "head.norm.": "norm.",
    "head.fc.": "head.",
}
_TIMM_KEY = re.compile(r"\.layer_scale[12]\.scale$|^head\.norm\.|^head\.fc\.")


def checkpoint_filter_fn(state: Dict[str, torch.Tensor], model=None) -> Dict[str, torch.Tensor]:
    """Released PoolFormer keys, or timm's port's, → sofa's (sofa's own keys pass through).

    timm's port: ``*.layer_scale{1,2}.scale`` → ``*.layer_scale{1,2}``, ``head.norm`` → ``norm``,
    ``head.fc`` → ``head``. Its backbone is PoolFormer's, but its head is not (it normalises after pooling,
    which the released model does not; measured on the reference fixtures: timm's port's logits differ from the
    released code's by 7–10% of their scale), so loading such a checkpoint warns: features match, logits do not.

    ``patch_embed.proj`` → ``stem.conv``; ``network.{2i}.{j}`` (stage i) → ``stages.i.blocks.j`` with
    ``layer_scale_{1,2}`` → ``layer_scale{1,2}``; ``network.{2i-1}.proj`` (downsampling before stage i) →
    ``stages.i.downsample.conv``; the dense output norms ``norm{2i}`` → ``out_norms.i``. Given the model, the
    position embeddings of hybrid attention stages are resampled to the model's grid.
    """
    if is_timm(state):
        state = {_TIMM_KEY.sub(lambda m: _TIMM_NAMES[m.group(0)], k): v for k, v in state.items()}
        if "norm.weight" in state:
            warnings.warn(
                "timm PoolFormer checkpoint: the backbone loads exactly (same stage outputs), but timm's "
                "head normalises the pooled vector (LayerNorm, eps 1e-6) where PoolFormer normalises the "
                "map before pooling (GroupNorm, eps 1e-5): its final-norm weights were trained for the "
                "other order, so the logits are not timm's",
                stacklevel=2,
            )
    elif is_original(state):
        out = {}
        for k, v in state.items():
            nk = k
            if k.startswith("patch_embed.proj."):
                nk = "stem.conv." + k[len("patch_embed.proj.") :]
            elif k.startswith("network."):
                m = re.match(r"network\.(\d+)\.(.*)", k)
                idx, rest = int(m.group(1)), m.group(2)
                if idx % 2 == 0:
                    rest = rest.replace("layer_scale_1", "layer_scale1").replace("layer_scale_2", "layer_scale2")
                    nk = f"stages.{idx // 2}.blocks.{rest}"
                else:
                    nk = f"stages.{(idx + 1) // 2}.downsample.conv.{rest.replace('proj.', '', 1)}"
            else:
                m = re.match(r"norm(\d+)\.(.*)", k)
                if m:
                    nk = f"out_norms.{int(m.group(1)) // 2}.{m.group(2)}"
            out[nk] = v
        state = out
    if model is not None:
        own = model.state_dict()
        from sofa.models.metaformer import resize_pos_embed_2d

        for k, v in list(state.items()):
            if (
                k.endswith("pos_embed")
                and k in own
                and v.dim() == 4
                and v.shape[:2] == own[k].shape[:2]
                and v.shape != own[k].shape
            ):
                state[k] = resize_pos_embed_2d(v, tuple(own[k].shape[-2:]))
    return state


def _features_kwargs(kwargs):
    kwargs.setdefault("out_norms", True)
    return kwargs


# ---------------------------------------------------------------------------------------------------- entry points
def _cfg(variant: str) -> Dict:
    return dict(
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=VARIANTS[variant]["crop"],
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.conv",
        classifier="head",
        num_classes=1000,
        paper_ids="arXiv:2111.11418",
        origin_url="https://github.com/sail-sg/poolformer",
    )


def _paper(variant: str) -> Dict:
    v = VARIANTS[variant]
    paper = {k: v[k] for k in ("params", "macs", "top1", "drop_path") if k in v}
    if variant == "mini":
        paper["note"] = "not in the paper (test fixture size)"
    return paper


def _hybrid_paper(mixers: str) -> Dict:
    h = HYBRID_MIXERS[mixers]
    return {k: h[k] for k in ("params", "macs", "top1", "note") if h.get(k) is not None}


def _create_poolformer(name: str, variant: str, pretrained: bool, hybrid: str | None = None, **kwargs) -> PoolFormer:
    """Model ``name``: the :data:`VARIANTS` entry ``variant``, with the stage-3/4 mixers of
    :data:`HYBRID_MIXERS` entry ``hybrid`` if given; ``kwargs`` override its architecture and carry the build's
    options (``checkpoint_path``, ``features_only``, ...)."""
    v = VARIANTS[variant]
    args = dict(depths=v["depths"], dims=kwargs.get("dims", v["dims"]), layer_scale_init_value=v["ls"])
    if hybrid is not None:
        args["token_mixers"] = HYBRID_MIXERS[hybrid]["mixers"](args["dims"])
    args.update(kwargs)
    return build_model_with_checkpoint(
        PoolFormer,
        name,
        _cfg(variant),
        pretrained=pretrained,
        filter_fn=checkpoint_filter_fn,
        features_kwargs=_features_kwargs,
        feature_keys=lambda k: k.startswith("out_norms."),
        **args,
    )


@register_model("poolformer", _cfg("s12"), _paper("s12"))
def poolformer_s12(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s12", "s12", pretrained, **kwargs)


@register_model("poolformer", _cfg("s24"), _paper("s24"))
def poolformer_s24(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s24", "s24", pretrained, **kwargs)


@register_model("poolformer", _cfg("s36"), _paper("s36"))
def poolformer_s36(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s36", "s36", pretrained, **kwargs)


@register_model("poolformer", _cfg("m36"), _paper("m36"))
def poolformer_m36(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_m36", "m36", pretrained, **kwargs)


@register_model("poolformer", _cfg("m48"), _paper("m48"))
def poolformer_m48(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_m48", "m48", pretrained, **kwargs)


@register_model("poolformer", _cfg("mini"), _paper("mini"))
def poolformer_mini(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_mini", "mini", pretrained, **kwargs)


@register_model("poolformer", _cfg("s12"), _hybrid_paper("identity"))
def poolformer_s12_identity(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s12_identity", "s12", pretrained, hybrid="identity", **kwargs)


@register_model("poolformer", _cfg("s12"), _hybrid_paper("attn"))
def poolformer_s12_attn(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s12_attn", "s12", pretrained, hybrid="attn", **kwargs)


@register_model("poolformer", _cfg("s12"), _hybrid_paper("soft"))
def poolformer_s12_soft(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s12_soft", "s12", pretrained, hybrid="soft", **kwargs)


@register_model("poolformer", _cfg("s12"), _hybrid_paper("set"))
def poolformer_s12_set(pretrained: bool = False, **kwargs) -> PoolFormer:
    return _create_poolformer("poolformer_s12_set", "s12", pretrained, hybrid="set", **kwargs)
