"""PoolFormer's token mixer: average pooling minus the input (the block's residual adds the input back)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_minus_input(x: torch.Tensor, pool_size: int = 3) -> torch.Tensor:
    """AvgPool(k, stride 1, padding k//2, count_include_pad=False)(x) − x on maps, windows clipped at the border.

    Args:
        x: (B, C, H, W), any memory layout (a channels-last map is pooled in that layout).
        pool_size: k, odd.

    Returns:
        (B, C, H, W), in ``x``'s layout and dtype.
    """
    # the pooled map is a fresh tensor that average pooling's backward does not read: subtract in place
    return F.avg_pool2d(x, pool_size, 1, pool_size // 2, count_include_pad=False).sub_(x)


def pool_minus_input_sequence(x: torch.Tensor, pool_size: int = 3, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k-wide average pooling along the sequence minus the input, over the real tokens only (padding neither
    counted nor mixed in).

    Args:
        x: (B, N, C) tokens. pool_size: k, odd. mask: (B, N), True for real tokens (None: all real).

    Returns:
        (B, N, C); padded positions hold values that mean nothing (callers zero them).
    """
    B, N, C = x.shape
    k = pool_size
    valid = torch.ones(B, N, 1, dtype=x.dtype, device=x.device) if mask is None else mask.unsqueeze(-1).to(x.dtype)
    xm = (x * valid).transpose(1, 2)  # (B, C, N)
    total = F.avg_pool1d(xm, k, 1, k // 2, count_include_pad=True) * k
    count = F.avg_pool1d(valid.transpose(1, 2), k, 1, k // 2, count_include_pad=True) * k
    return (total / count.clamp_min(1.0)).transpose(1, 2) - x
