"""Parameter-free mixers: PoolFormer's pooling and the identity (PoolFormer's ablation)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from sofa.mixers.base import TokenMixer, zero_padded
from sofa.ops.common import is_tracing
from sofa.ops.pool import pool_minus_input, pool_minus_input_sequence


class Pooling(TokenMixer):
    """PoolFormer token mixer: average pooling minus the input (the block's residual adds the input back),
    :func:`sofa.ops.pool.pool_minus_input`.

    Images: k×k pooling over the H×W grid, windows clipped at the border. Sequences: k-wide pooling along
    the sequence over the real tokens only (padding neither counted nor mixed in). A (B, C, H, W) map (what
    the PoolFormer block passes) is pooled as it is.
    """

    def __init__(self, pool_size: int = 3):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"Pooling: pool_size must be a positive odd number, got {pool_size}")
        self.pool_size = pool_size

    def forward(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if x.dim() == 4:
            return pool_minus_input(x, self.pool_size)
        if not torch.jit.is_scripting():
            if not is_tracing():
                self.check_input(x, hw, mask)
        B, N, C = x.shape
        if hw is not None:
            # the tokens (B, N, C) are a channels-last (B, C, H, W) image as they lie: pooling reads and writes
            # that layout, so neither direction needs a transposed copy (the same arithmetic per element)
            img = x.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)
            return pool_minus_input(img, self.pool_size).permute(0, 2, 3, 1).reshape(B, N, C)
        return zero_padded(pool_minus_input_sequence(x, self.pool_size, mask), mask)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"


class Identity(TokenMixer):
    """Returns its input unchanged (PoolFormer's identity-mixer ablation); a (B, C, H, W) map too."""

    def forward(
        self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if x.dim() == 4:
            return x
        if not torch.jit.is_scripting():
            if not is_tracing():
                self.check_input(x, hw, mask)
        return zero_padded(x, mask)
