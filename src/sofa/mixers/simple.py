"""Parameter-free mixers: PoolFormer's pooling and the identity (PoolFormer's ablation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sofa.mixers.base import TokenMixer, zero_padded


def pool_minus_input_2d(x: torch.Tensor, pool_size: int = 3) -> torch.Tensor:
    """PoolFormer's mixer on a (B, C, H, W) map: AvgPool(k, stride 1, pad k//2, count_include_pad=False) − x."""
    return F.avg_pool2d(x, pool_size, 1, pool_size // 2, count_include_pad=False) - x


class Pooling(TokenMixer):
    """PoolFormer token mixer: average pooling minus the input (the block's residual adds the input back).

    Images: k×k pooling over the H×W grid, windows clipped at the border. Sequences: k-wide pooling along
    the sequence over the real tokens only (padding neither counted nor mixed in).
    """

    def __init__(self, pool_size: int = 3):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"Pooling: pool_size must be a positive odd number, got {pool_size}")
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor, hw=None, mask=None) -> torch.Tensor:
        self.check_input(x, hw, mask)
        B, N, C = x.shape
        if hw is not None:
            # the tokens (B, N, C) are a channels-last (B, C, H, W) image as they lie: pooling reads and writes
            # that layout, so neither direction needs a transposed copy (the same arithmetic per element)
            H, W = hw
            img = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
            k = self.pool_size
            pooled = F.avg_pool2d(img, k, 1, k // 2, count_include_pad=False)
            out = pooled.sub_(img) if not torch.is_grad_enabled() else pooled - img
            return out.permute(0, 2, 3, 1).reshape(B, N, C)
        k = self.pool_size
        valid = torch.ones(B, N, 1, dtype=x.dtype, device=x.device) if mask is None else mask.unsqueeze(-1).to(x.dtype)
        xm = (x * valid).transpose(1, 2)  # (B, C, N)
        total = F.avg_pool1d(xm, k, 1, k // 2, count_include_pad=True) * k
        count = F.avg_pool1d(valid.transpose(1, 2), k, 1, k // 2, count_include_pad=True) * k
        out = (total / count.clamp_min(1.0)).transpose(1, 2) - x
        return zero_padded(out, mask)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"


class Identity(TokenMixer):
    """Returns its input unchanged (PoolFormer's identity-mixer ablation)."""

    def forward(self, x: torch.Tensor, hw=None, mask=None) -> torch.Tensor:
        self.check_input(x, hw, mask)
        return zero_padded(x, mask)
