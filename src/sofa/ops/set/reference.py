"""SeT's attention written plainly, to test the fast forms against: the whole (n, m) transport plan from the
Nyström scores and log-domain Sinkhorn (:func:`sofa.ops.sinkhorn_log`), the position filter added in the log
domain, and the two normalisations as softmaxes. Memory quadratic in nothing but n·m; no blocks, no scaling
domain, no fallbacks; float64 inputs stay float64."""

from __future__ import annotations

import torch

from sofa.ops.nystrom import nystrom_embedding
from sofa.ops.position import GridFilter, SequenceFilter
from sofa.ops.sinkhorn import sinkhorn_log


def set_log_plan(
    f: torch.Tensor,
    anchors: torch.Tensor,
    reference: torch.Tensor,
    sigma: float = 0.5,
    eps: float = 0.1,
    iters: int = 5,
    log_m=None,
    mask: torch.Tensor | None = None,
    ridge: float = 1e-3,
    nystrom_iters: int = 20,
) -> torch.Tensor:
    """log(T ⊙ M): the log of the entropic OT plan T between the tokens and the references, times the position
    filter M (docs/methods/setformer.md).

    Args:
        f: (B, h, n, d) features; anchors: (h, k, d); reference: (h, m, k).
        log_m: log M broadcastable to (B, h, n, m), a :class:`~sofa.ops.position.GridFilter` or
            :class:`~sofa.ops.position.SequenceFilter`, or None.
        mask: (B, n) or (B, h, n), True for real tokens.

    Returns:
        (B, h, n, m), float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(f.dtype, torch.float32)
    B, h, n, _ = f.shape
    psi = nystrom_embedding(f.to(dtype), anchors.to(dtype), sigma, ridge, nystrom_iters)  # (B, h, n, k)
    scores = psi @ reference.to(dtype).transpose(-1, -2)  # (B, h, n, m)
    if mask is not None:
        mask = (mask[:, None, :] if mask.dim() == 2 else mask).expand(B, h, n)
    log_t = sinkhorn_log(scores, eps, iters, mask)
    if isinstance(log_m, (GridFilter, SequenceFilter)):
        log_m = log_m.log_block(0, n)
    return log_t if log_m is None else log_t + log_m


def set_attention_reference(
    f, anchors, reference, values, sigma=0.5, eps=0.1, iters=5, log_m=None, mask=None, ridge=1e-3, nystrom_iters=20
) -> torch.Tensor:
    """rownorm(T ⊙ M)·(colnorm(T ⊙ M)ᵀ·values), as :func:`sofa.ops.set.set_attention` defines it (same arguments,
    values (B, h, n, dv)).

    Returns:
        (B, h, n, dv), float32 (float64 for float64 inputs).
    """
    log_p = set_log_plan(f, anchors, reference, sigma, eps, iters, log_m, mask, ridge, nystrom_iters)
    A = torch.softmax(log_p, -2).transpose(-1, -2) @ values.to(log_p.dtype)
    return torch.softmax(log_p, -1) @ A
