"""The MetaFormer block with GroupNorm(1) as the paper writes it, to test the folded and fused forms against:
``x + DropPath(ls1 · mixer(GroupNorm(x)))``, then ``x + DropPath(ls2 · fc2(GELU(fc1(GroupNorm(x)))))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import drop_path as _drop_path

from sofa.ops.pool.pooling import pool_minus_input


def metaformer_block_reference(
    x: torch.Tensor,
    w,
    mixer="pool",
    pool_size: int = 3,
    drop: float = 0.0,
    drop_path: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """One block, textbook form (arguments as :func:`sofa.ops.pool.metaformer_block`).

    Args:
        x: (B, C, H, W). w: :class:`sofa.ops.pool.BlockWeights`. mixer: "pool", "identity" or a function
            (B, C, H, W) → (B, C, H, W).

    Returns:
        (B, C, H, W).
    """
    n = F.group_norm(x, 1, w.norm1_weight, w.norm1_bias, w.norm1_eps)
    if mixer == "pool":
        y = pool_minus_input(n, pool_size)
    elif mixer == "identity":
        y = n
    else:
        y = mixer(n)
    x = x + _drop_path(w.layer_scale1.view(-1, 1, 1) * y, drop_path, training)
    n = F.group_norm(x, 1, w.norm2_weight, w.norm2_bias, w.norm2_eps)
    h = F.dropout(F.gelu(F.conv2d(n, w.fc1_weight, w.fc1_bias)), drop, training)
    h = F.dropout(F.conv2d(h, w.fc2_weight, w.fc2_bias), drop, training)
    return x + _drop_path(w.layer_scale2.view(-1, 1, 1) * h, drop_path, training)
