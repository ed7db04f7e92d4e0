"""Token mixers with one calling convention: ``mixer(x, hw=None, mask=None)``, x (B, N, C) → (B, N, C).

Images pass ``hw=(H, W)``; sequences pass a padding mask (B, N) (True = real token) or nothing.
"""

from __future__ import annotations

from sofa.mixers.attention import SoftmaxAttention
from sofa.mixers.base import TokenMixer
from sofa.mixers.set import SeTAttention
from sofa.mixers.simple import Identity, Pooling
from sofa.mixers.soft import SoftAttention, bounded_grid

MIXERS = {
    "pool": Pooling,
    "identity": Identity,
    "soft": SoftAttention,
    "soft_norm": lambda dim, num_heads, **kw: SoftAttention(dim, num_heads, normalized=True, **kw),
    "set": SeTAttention,
    "attn": SoftmaxAttention,
}


def build_mixer(kind: str, dim: int, num_heads: int | None = None, **kwargs) -> TokenMixer:
    """A mixer by kind: "pool", "identity", "soft", "soft_norm", "set" or "attn"."""
    if kind not in MIXERS:
        raise ValueError(f"unknown mixer {kind!r}; choose from {sorted(MIXERS)}")
    if kind in ("pool", "identity"):
        return MIXERS[kind](**kwargs)
    if num_heads is None:
        raise ValueError(f"mixer {kind!r} needs num_heads")
    return MIXERS[kind](dim, num_heads, **kwargs)


__all__ = [
    "TokenMixer",
    "Pooling",
    "Identity",
    "SoftAttention",
    "SeTAttention",
    "SoftmaxAttention",
    "build_mixer",
    "bounded_grid",
    "MIXERS",
]
