"""SeTformer (Shamsolmoali et al., "SeTformer is What You Need for Vision and Language", AAAI 2024); the method
in docs/methods/setformer.md.

No code or size table was released; this is the project's design where the paper is silent, on the MetaFormer
builder (:mod:`sofa.models.metaformer`):

* Stem: the paper's two 3×3 stride-2 convolutions (stride 4): conv(3→C/2) → LayerNorm → GELU → conv(C/2→C) →
  LayerNorm (the norms and GELU are this project's choice).
* Four stages; between them a 3×3 stride-2 convolution that doubles the channels (paper), then LayerNorm.
* Blocks: pre-norm, NAT/Swin style, with LayerScale (init 1e-5): ``x + ls1·SeT(LN(x))``, ``x + ls2·MLP(LN(x))``;
  SeT attention (:class:`sofa.mixers.SeTAttention`) with heads of size 32, m = 49 references (7×7), k = 32
  anchors, ε = 0.1, τ = 0.1, 5 Sinkhorn iterations; no shifted windows, no attention bias (paper).
* Head: LayerNorm → global average pool → Linear.

Sizes: widths and depths chosen to land within 10% of the targets in docs/methods/setformer.md (parameters and
MACs at 224², measured by :func:`sofa.models.flops.count_macs`): Mini 15.9M / 3.00G (MLP ratio 4), Tiny 24.2M / 4.24G,
Small 35.1M / 6.64G, Base 49.7M / 8.81G (MLP ratio 3); checked by hand for Mini (tests/test_flops_by_hand.py).
Any input size works: every stage is global over its tokens with a fixed reference set (linear cost).
"""

from __future__ import annotations

from typing import Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sofa.models._builder import build_model_with_checkpoint
from sofa.models.metaformer import MetaFormer
from sofa.models.registry import register_model

__all__ = ["SeTformer", "VARIANTS"]

# ---------------------------------------------------------------------------------------------------- variants
#  name      dims                     depths          MLP ratio   targets: params(M)  MACs(G)  reported top-1
VARIANTS = {
    "mini": dict(dims=(64, 128, 256, 512), depths=(2, 2, 10, 2), mlp_ratio=4.0, params=16, macs=2.8, top1=81.7),
    "tiny": dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), mlp_ratio=3.0, params=24, macs=4.3, top1=83.9),
    "small": dict(dims=(96, 192, 384, 768), depths=(2, 2, 14, 2), mlp_ratio=3.0, params=35, macs=6.5, top1=84.7),
    "base": dict(dims=(128, 256, 512, 1024), depths=(2, 2, 9, 2), mlp_ratio=3.0, params=50, macs=9.0, top1=86.2),
}
HEAD_DIM = 32


class SeTformer(MetaFormer):
    """SeTformer on the MetaFormer builder: LayerNorm token blocks with SeT attention in every stage."""

    def __init__(
        self,
        depths=(2, 2, 6, 2),
        dims=(96, 192, 384, 768),
        mlp_ratios=3.0,
        num_refs: int = 49,
        num_anchors: int = 32,
        eps: float = 0.1,
        tau: float = 0.1,
        sinkhorn_iters: int = 5,
        layer_scale_init_value=1e-5,
        token_mixers=None,
        **kwargs,
    ):
        if token_mixers is None:
            token_mixers = [
                dict(
                    kind="set",
                    num_heads=max(1, d // HEAD_DIM),
                    num_refs=num_refs,
                    num_anchors=num_anchors,
                    eps=eps,
                    tau=tau,
                    sinkhorn_iters=sinkhorn_iters,
                )
                for d in dims
            ]
        kwargs.setdefault("norm", "layernorm")
        kwargs.setdefault("stem", "conv2")
        kwargs.setdefault("downsample_norm", True)
        super().__init__(
            depths=depths,
            dims=dims,
            token_mixers=token_mixers,
            mlp_ratios=mlp_ratios,
            layer_scale_init_value=layer_scale_init_value,
            **kwargs,
        )


def checkpoint_filter_fn(state: Dict, model=None) -> Dict:
    """SeTformer has no released checkpoints: sofa's own keys pass through."""
    return state


# ---------------------------------------------------------------------------------------------------- entry points
def _cfg() -> Dict:
    return dict(
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.conv1",
        classifier="head",
        num_classes=1000,
        paper_ids="arXiv:2401.03540",
    )


def _paper(variant: str) -> Dict:
    v = VARIANTS[variant]
    return dict(params=v["params"], macs=v["macs"], top1=v["top1"], note="targets (docs/methods/setformer.md)")


def _create_setformer(name: str, variant: str, pretrained: bool, **kwargs) -> SeTformer:
    """Model ``name``: the :data:`VARIANTS` entry ``variant``; ``kwargs`` override its architecture and carry the
    build's options (``checkpoint_path``, ``features_only``, ...)."""
    v = VARIANTS[variant]
    args = dict(depths=v["depths"], dims=v["dims"], mlp_ratios=v["mlp_ratio"])
    args.update(kwargs)
    return build_model_with_checkpoint(
        SeTformer, name, _cfg(), pretrained=pretrained, filter_fn=checkpoint_filter_fn, **args
    )


@register_model("setformer", _cfg(), _paper("mini"))
def setformer_mini(pretrained: bool = False, **kwargs) -> SeTformer:
    return _create_setformer("setformer_mini", "mini", pretrained, **kwargs)


@register_model("setformer", _cfg(), _paper("tiny"))
def setformer_tiny(pretrained: bool = False, **kwargs) -> SeTformer:
    return _create_setformer("setformer_tiny", "tiny", pretrained, **kwargs)


@register_model("setformer", _cfg(), _paper("small"))
def setformer_small(pretrained: bool = False, **kwargs) -> SeTformer:
    return _create_setformer("setformer_small", "small", pretrained, **kwargs)


@register_model("setformer", _cfg(), _paper("base"))
def setformer_base(pretrained: bool = False, **kwargs) -> SeTformer:
    return _create_setformer("setformer_base", "base", pretrained, **kwargs)
