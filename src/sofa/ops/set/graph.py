"""SeT's attention as one straight graph for TorchScript: the arithmetic of
:func:`sofa.ops.set.set_attention_reference` (whole (n, m) plan, log-domain Sinkhorn, the two normalisations as
softmaxes), with the position filter given as a dense tensor and no autocast handling, so that
``torch.jit.script`` compiles it."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from sofa.ops.nystrom import inverse_sqrt_psd_plain, spherical_gaussian_kernel_plain
from sofa.ops.sinkhorn import sinkhorn_log_plain


def grid_log_filter(
    hw: tuple[int, int], grid: tuple[int, int], tau: float, device: Optional[torch.device] = None
) -> torch.Tensor:
    """log M of ``position_filter_2d(hw, grid, tau, log=True)``, (H·W, gh·gw), float32: token (i, j) of the
    H×W grid and reference (a, b) of the gh×gw grid get −((αᵢ − βₐ)² + (αⱼ − β_b)²)/τ², cell centres on both."""
    H, W = hw
    gh, gw = grid
    rows = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) / H
    cols = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W
    ref_rows = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) / gh
    ref_cols = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) / gw
    log_rows = -(rows[:, None] - ref_rows[None, :]).pow(2) / (tau * tau)  # (H, gh)
    log_cols = -(cols[:, None] - ref_cols[None, :]).pow(2) / (tau * tau)  # (W, gw)
    return (log_rows[:, None, :, None] + log_cols[None, :, None, :]).reshape(H * W, gh * gw)


def set_attention_graph(
    f: torch.Tensor,
    anchors: torch.Tensor,
    reference: torch.Tensor,
    values: torch.Tensor,
    sigma: float,
    eps: float,
    iters: int,
    log_m: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    ridge: float = 1e-3,
    nystrom_iters: int = 20,
) -> torch.Tensor:
    """rownorm(T ⊙ M)·(colnorm(T ⊙ M)ᵀ·values), as :func:`sofa.ops.set.set_attention` defines it.

    Args:
        f: (B, h, n, d) features; anchors: (h, k, d) (normalised here); reference: (h, m, k);
            values: (B, h, n, dv).
        log_m: log M broadcastable to (B, h, n, m), or None; mask: (B, n), True for real tokens, or None.

    Returns:
        (B, h, n, dv), float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(f.dtype, torch.float32)
    z = F.normalize(anchors.to(dtype), dim=-1)
    root = inverse_sqrt_psd_plain(spherical_gaussian_kernel_plain(z, z, sigma), ridge, nystrom_iters)
    psi = spherical_gaussian_kernel_plain(f.to(dtype), z, sigma) @ root  # (B, h, n, k)
    scores = psi @ reference.to(dtype).transpose(-1, -2)  # (B, h, n, m)
    valid: Optional[torch.Tensor] = None
    if mask is not None:
        valid = mask[:, None, :].expand(scores.shape[:-1])
    log_p = sinkhorn_log_plain(scores / eps, iters, valid)
    if log_m is not None:
        log_p = log_p + log_m.to(dtype)
    A = torch.softmax(log_p, -2).transpose(-1, -2) @ values.to(dtype)
    return torch.softmax(log_p, -1) @ A
