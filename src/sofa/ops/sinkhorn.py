"""Entropic optimal transport by log-domain Sinkhorn iterations."""

from __future__ import annotations

import math

import torch

from sofa.ops.common import fp32, is_tracing, no_autocast
from sofa.ops.numerics import MASKED_LOG


def uniform_log_marginal(shape, n, like: torch.Tensor) -> torch.Tensor:
    """log(1/n) in every entry of ``shape``, in ``like``'s dtype and device; under a graph capture, where n may be
    a symbolic size, computed by tensor operations."""
    if is_tracing():
        return torch.full(shape, n, dtype=like.dtype, device=like.device).log().neg()
    return torch.full(shape, -math.log(n), dtype=like.dtype, device=like.device)


def sinkhorn_log(scores: torch.Tensor, eps: float, iters: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The log of the entropic OT plan between n tokens and m references, (..., n, m) → (..., n, m), fp32.

    The plan is T = diag(a)·exp(scores/ε)·diag(b) scaled so that rows sum to 1/n_valid (padded rows, where
    ``mask`` (..., n) is False, get zero mass) and columns to 1/m: the minimiser of ⟨T, −scores⟩ − ε·H(T) with
    those marginals. Each of ``iters`` iterations updates the row potential, then the column potential, so the
    column marginals hold exactly and the row marginals converge. Stable for ε down to 0.01 and for half-
    precision scores (everything runs in float32 in the log domain).
    """
    if eps <= 0:
        raise ValueError(f"sinkhorn: eps must be positive, got {eps}")
    if iters < 1:
        raise ValueError(f"sinkhorn: iters must be at least 1, got {iters}")
    if scores.dim() < 2:
        raise ValueError(f"sinkhorn: expected scores of shape (..., n, m), got {tuple(scores.shape)}")
    n, m = scores.shape[-2:]
    with no_autocast(scores):
        logK = fp32(scores) / eps
        log_b = -math.log(m)
        if mask is None:
            log_a = uniform_log_marginal(logK.shape[:-1], n, logK)
            valid = None
        else:
            if mask.shape != scores.shape[:-1]:
                mask = mask.expand(scores.shape[:-1]) if mask.dim() <= scores.dim() - 1 else mask
            if mask.shape != scores.shape[:-1]:
                raise ValueError(
                    f"sinkhorn: mask must have shape {tuple(scores.shape[:-1])} (the scores without the last "
                    f"dimension), got {tuple(mask.shape)}"
                )
            valid = mask.bool()
            n_valid = valid.sum(-1, keepdim=True).clamp_min(1).to(logK.dtype)
            log_a = torch.where(valid, -torch.log(n_valid), torch.full_like(logK[..., 0], MASKED_LOG))
            logK = logK.masked_fill(~valid.unsqueeze(-1), 0.0)
        v = torch.zeros_like(logK[..., 0, :])  # (..., m)
        for _ in range(iters):
            u = log_a - torch.logsumexp(logK + v.unsqueeze(-2), dim=-1)
            if valid is not None:
                u = torch.where(valid, u, torch.full_like(u, MASKED_LOG))
            v = log_b - torch.logsumexp(logK + u.unsqueeze(-1), dim=-2)
        return logK + u.unsqueeze(-1) + v.unsqueeze(-2)


def sinkhorn(scores: torch.Tensor, eps: float, iters: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The entropic OT plan on the Gibbs kernel exp(scores/ε): (..., n, m) → (..., n, m), float32.

    Rows sum to 1/n_valid (rows where ``mask`` is False carry exactly zero mass) and columns to 1/m; see
    ``sinkhorn_log`` for the log of the same plan.
    """
    return sinkhorn_log(scores, eps, iters, mask).exp()
