"""Exact softmax attention: the baseline every benchmark compares against, and SOFT's last stage."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sofa.layers import Linear
from sofa.mixers.base import TokenMixer, merge_heads, split_heads, zero_padded


class SoftmaxAttention(TokenMixer):
    """Multi-head softmax attention softmax(QKᵀ/√d)·V, O(N²) time.

    ``sr_ratio`` > 1 reduces the keys and values spatially (PVT, SOFT's last stage keeps 1): an sr×sr stride-sr
    convolution and a LayerNorm before the kv projection (images only). ``impl="sdpa"`` runs through
    ``scaled_dot_product_attention`` (fused, memory-efficient where available); ``impl="materialized"`` forms
    the N×N matrix softmax(QKᵀ)V explicitly (for memory comparisons).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        sr_ratio: int = 1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: str = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SoftmaxAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if impl not in ("sdpa", "materialized"):
            raise ValueError(f"SoftmaxAttention: impl must be 'sdpa' or 'materialized', got {impl!r}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio, self.impl = sr_ratio, impl
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(dim, 2 * dim, bias=qkv_bias)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.norm = nn.LayerNorm(dim) if sr_ratio > 1 else None
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        self.check_input(x, hw, mask)
        B, N, C = x.shape
        q = split_heads(self.q(x), self.num_heads)
        kv_in = x
        if self.sr is not None and self.norm is not None:
            if hw is None:
                raise ValueError("SoftmaxAttention: spatial reduction (sr_ratio > 1) needs images: pass hw=(H, W)")
            H, W = hw
            if H < self.sr_ratio or W < self.sr_ratio:
                raise ValueError(f"SoftmaxAttention: input {H}x{W} is smaller than sr_ratio {self.sr_ratio}")
            kv_in = self.norm(self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2))
        k, v = self.kv(kv_in).chunk(2, dim=-1)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        key_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        drop = self.attn_drop if self.training else 0.0
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=drop)
        else:
            scores = (q * self.scale) @ k.transpose(-1, -2)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, float("-inf"))
            out = F.dropout(scores.softmax(-1), drop, self.training) @ v
        return zero_padded(self.proj_drop(self.proj(merge_heads(out))), mask)
