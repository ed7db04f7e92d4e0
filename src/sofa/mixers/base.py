"""The calling convention shared by every token mixer, and its input checks."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class TokenMixer(nn.Module):
    """Base class: ``forward(x, hw=None, mask=None)`` with x (B, N, C) → (B, N, C).

    Images pass ``hw=(H, W)`` with N = H·W (row-major tokens); sequences pass ``hw=None`` and optionally a
    padding ``mask`` (B, N), True where a token is real. Outputs at padded positions are zero.
    """

    #: whether the mixer can mix a sequence (hw=None); image-only mixers set it False
    supports_sequences = True

    def check_input(self, x: torch.Tensor, hw, mask):
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__}: expected tokens (B, N, C), got shape {tuple(x.shape)}")
        B, N, _ = x.shape
        if hw is not None:
            H, W = hw
            if H * W != N:
                raise ValueError(
                    f"{type(self).__name__}: spatial size {H}x{W} = {H * W} tokens, but the input has N = {N}"
                )
            if mask is not None:
                raise ValueError(f"{type(self).__name__}: pass either hw (images) or mask (sequences), not both")
        elif not self.supports_sequences:
            raise ValueError(f"{type(self).__name__} mixes images only: pass hw=(H, W)")
        if mask is not None and tuple(mask.shape) != (B, N):
            raise ValueError(f"{type(self).__name__}: mask must have shape {(B, N)}, got {tuple(mask.shape)}")


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, h·d) → (B, h, N, d)."""
    B, N, C = t.shape
    return t.view(B, N, heads, C // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) → (B, N, h·d)."""
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d)


def zero_padded(out: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return out if mask is None else out * mask.unsqueeze(-1).to(out.dtype)
