"""Gaussian kernels from squared distances."""
from __future__ import annotations

import torch

from sofa.ops._util import fp32, no_autocast

# exp(-40) ~ 4e-18: kernel entries below it are set to exact zero. Products of two kept entries stay far
# above float32's smallest normal number (1.2e-38), so the matmuls that follow never produce subnormal
# floats, whose CPU arithmetic is ~20x slower (the released SOFT code's CPU slowdown). The change to any
# output is below 1e-17 per entry, far under float32 resolution of entries of order one.
UNDERFLOW_EXPONENT = -40.0


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, ``|a|² + |b|² − 2a·b``, clamped at zero.

    a: (..., n, d), b: (..., m, d) → (..., n, m), in float32 (float64 stays float64).
    The expansion can come out slightly negative by rounding; distances are never negative here.
    """
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"squared_distances: feature sizes differ, a has {a.shape[-1]} and b has {b.shape[-1]}")
    with no_autocast(a):
        a, b = fp32(a), fp32(b)
        if a.dtype != b.dtype:
            a, b = a.double(), b.double()
        a2 = a.pow(2).sum(-1, keepdim=True)  # (..., n, 1)
        b2 = b.pow(2).sum(-1).unsqueeze(-2)  # (..., 1, m)
        d = torch.baddbmm(
            (a2 + b2).reshape(-1, a.shape[-2], b.shape[-2]),
            a.reshape(-1, a.shape[-2], a.shape[-1]),
            b.reshape(-1, b.shape[-2], b.shape[-1]).transpose(1, 2),
            alpha=-2.0,
        ) if a.shape[:-2] == b.shape[:-2] else a2 + b2 - 2.0 * a @ b.transpose(-1, -2)
        d = d.reshape(*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-2])
        return d.clamp_min(0.0)


def underflow_to_zero(exponent: torch.Tensor) -> torch.Tensor:
    """``exp(exponent)``, with entries whose exponent is below ``UNDERFLOW_EXPONENT`` set to exact zero."""
    return torch.exp(exponent.clamp_min(UNDERFLOW_EXPONENT)) * (exponent >= UNDERFLOW_EXPONENT)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``exp(−½·dist²(a, b))`` (SOFT's kernel), (..., n, d) × (..., m, d) → (..., n, m), float32.

    Entries too small to matter (below exp(−40)) are exact zeros: see ``UNDERFLOW_EXPONENT``.
    """
    return underflow_to_zero(-0.5 * squared_distances(a, b))
