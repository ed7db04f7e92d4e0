"""The calling convention shared by every token mixer, and its input checks."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from sofa.ops.common import is_tracing


class TokenMixer(nn.Module):
    """Base class: ``forward(x, hw=None, mask=None)`` with x (B, N, C) → (B, N, C).

    Images pass ``hw=(H, W)`` with N = H·W (row-major tokens); sequences pass ``hw=None`` and optionally a
    padding ``mask`` (B, N), True where a token is real. Outputs at padded positions are zero.
    """

    #: whether the mixer can mix a sequence (hw=None); image-only mixers set it False
    supports_sequences = True
    __constants__ = ["supports_sequences"]

    def check_input(self, x: torch.Tensor, hw: Optional[Tuple[int, int]], mask: Optional[torch.Tensor]):
        """Raise ValueError on inputs of the wrong layout; under a graph capture the same checks are graph
        assertions (:meth:`assert_input`)."""
        if torch.jit.is_scripting():
            self.assert_input(x, hw, mask)
            return
        if is_tracing():
            self.assert_input(x, hw, mask)
            return
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

    def assert_input(self, x: torch.Tensor, hw: Optional[Tuple[int, int]], mask: Optional[torch.Tensor]):
        """:meth:`check_input`'s checks as ``torch._assert`` (they hold symbolic shapes and stay in the graph)."""
        torch._assert(x.dim() == 3, "token mixer: expected tokens (B, N, C)")
        if hw is not None:
            torch._assert(hw[0] * hw[1] == x.shape[1], "token mixer: H·W differs from the number of tokens N")
            torch._assert(mask is None, "token mixer: pass either hw (images) or mask (sequences), not both")
        else:
            torch._assert(self.supports_sequences, "token mixer: this mixer mixes images only, pass hw=(H, W)")
        if mask is not None:
            torch._assert(mask.shape == x.shape[:2], "token mixer: mask must have shape (B, N)")


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
