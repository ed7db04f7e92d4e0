"""SeT's whole attention in one streaming pass structure: Nyström scores, Sinkhorn, plan-weighted aggregation.

``set_attention`` computes, per head, exactly what ``SeTAttention.log_plan`` followed by its two softmaxes
computes (the reference path, kept for tests and plots):

    log T = log K + u·1ᵀ + 1·vᵀ (Sinkhorn potentials u, v on log K = scores/ε), log P = log T + log M,
    out = softmax_rows(log P) · (softmax_cols(log P)ᵀ · values)

but over blocks of tokens, without ever holding an N×m temporary other than log K itself: the row update of
each Sinkhorn iteration is local to a block, the column update is a log-sum-exp over all rows accumulated
block by block (running maximum and sum), the column softmax that collects the values is accumulated the same
way (as in flash attention), and the row softmax that reads them back is again local to a block. Each block's
temporaries stay in the cache, so the time is proportional to N, and the memory beyond the inputs and the
output is log K (N×m per head) and one block.

Two identities make it cheaper: u cancels in the row softmax and v in the column softmax (constants along the
normalised axis), and the Nyström root and the reference fold into one k×m matrix, κ(f, Z)·(κ(Z,Z)^{−1/2}·Yᵀ/ε).

Subnormal floats never appear: every exponential is taken of a shifted argument clamped above the range where
float32's ``exp`` produces subnormals (and where the CPU's exp is many times slower); in the softmax weights,
entries below exp(−40) of their row's or column's largest are exact zeros, as in SOFT's kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sofa.ops._util import fp32, no_autocast, token_spans
from sofa.ops.nystrom import inverse_sqrt_psd, spherical_gaussian_kernel

#: bytes of one block of an (N, m) temporary: a few of them stay in the cache together
CHUNK_BYTES = 2 * 2**20
# log-mass of padded rows, as in sinkhorn_log: exp of it is exactly zero, yet it stays finite
_MASKED_LOG = -1e30
# the softmax weights keep entries ≥ exp(−40) of the largest (same rule as SOFT's kernel) ...
_WEIGHT_FLOOR = -40.0
# ... and so do the terms of the log-sum-exps of the autograd path: a term below exp(−40) of the largest is an
# exact zero (it changes the sum by less than N·exp(−40) ≈ 2e-13 relative at N = 50,176). A floor of exp(−80)
# let the backward pass make subnormals (gradient × exp(−80) is below float32's smallest normal number for any
# gradient under 6e-4): thousands per training step of SeT at 112², each ~20× slower on the CPU.
_LSE_FLOOR = _WEIGHT_FLOOR  # (the threshold below keeps exactly the terms ≥ exp(_WEIGHT_FLOOR))


def _exp_weights(t: torch.Tensor) -> torch.Tensor:
    """exp(t) for t ≤ 0 (already shifted by its maximum), with entries below exp(−40) set to exact zero.
    ``t`` is overwritten when no autograd is recording (it is always a fresh temporary here)."""
    if not (torch.is_grad_enabled() and t.requires_grad):
        return F.threshold_(t.clamp_min_(_WEIGHT_FLOOR - 1.0).exp_(), _keep_threshold(), 0.0)
    w = torch.exp(t.clamp_min(_WEIGHT_FLOOR - 1.0))
    return F.threshold(w, _keep_threshold(), 0.0)


_KEEP = []


def _keep_threshold() -> float:
    if not _KEEP:
        e = torch.exp(torch.tensor(_WEIGHT_FLOOR))
        _KEEP.append(torch.nextafter(e, torch.zeros(())).item())
    return _KEEP[0]


def _lse(t: torch.Tensor, dim: int) -> torch.Tensor:
    """log Σ exp(t) along ``dim`` (kept), shifted by the detached maximum (the gradient is unchanged)."""
    mx = t.amax(dim, keepdim=True).detach()
    return mx + _exp_terms(t - mx).sum(dim, keepdim=True).log()


def _exp_terms(t: torch.Tensor) -> torch.Tensor:
    """exp(t) for t ≤ 0 with terms below exp(_LSE_FLOOR) exact zeros (autograd path; gradients stay normal)."""
    return F.threshold(torch.exp(t.clamp_min(_LSE_FLOOR - 1.0)), _keep_threshold(), 0.0)


def _combine_lse(M, S, cm, cs):
    """Merge two partial log-sum-exps given as (max, sum of exp(· − max)) pairs."""
    if M is None:
        return cm, cs
    new = torch.maximum(M, cm)
    S = S * _exp_terms(M - new) + cs * _exp_terms(cm - new)  # one factor is exp(0) = 1: S stays ≥ 1
    return new, S


def _sinkhorn_log_blocks(logK, log_a, log_b, valid, spans, iters):
    """Log-domain Sinkhorn over blocks of rows: every iteration takes two exponentials per entry (autograd)."""
    B, h, _, m = logK[0].shape
    v = torch.zeros((B, h, 1, m), dtype=logK[0].dtype, device=logK[0].device)
    us = [None] * len(spans)
    for _ in range(iters):
        M = S = None
        for b, (i, j) in enumerate(spans):
            u = log_a[..., i:j, None] - _lse(logK[b] + v, -1)  # (B, h, c, 1)
            if valid is not None:
                u = torch.where(valid[..., i:j, None], u, torch.full_like(u, _MASKED_LOG))
            us[b] = u
            s = logK[b] + u
            cm = s.amax(-2, keepdim=True).detach()
            M, S = _combine_lse(M, S, cm, _exp_terms(s - cm).sum(-2, keepdim=True))
        v = log_b - (M + S.log())  # (B, h, 1, m)
    return us, v


# A scaled sum is trusted when it is at least exp(−20): the terms dropped below exp(−40) (at most m of them)
# then change it by less than m·exp(−20) ≈ 1e-7 relative. Rows or columns below it are recomputed exactly.
_TRUST = math.exp(-20.0)


def _scaled(t: torch.Tensor) -> torch.Tensor:
    """exp(t) for t ≤ 0, entries below exp(−40) exact zeros (products of two such factors stay normal)."""
    return F.threshold(torch.exp(t.clamp_min(_WEIGHT_FLOOR - 1.0)), _keep_threshold(), 0.0)


@torch.no_grad()
def _sinkhorn_scaled_blocks(logK, log_a, log_b, valid, spans, iters):
    """The same iterations as ``_sinkhorn_log_blocks`` without autograd, in the scaling domain: one
    exponential per entry in all, K̃ = exp(log K − row max), then each half-iteration is a matrix–vector
    product with K̃ (or K̃ᵀ) and a vector of exponentials of the potentials shifted by their maximum. The log
    of each sum plus the shifts is the log-sum-exp of the log-domain iteration. A row or column whose sum is
    too small to trust (``_TRUST``: its large terms were underflow-zeroed) is recomputed exactly in the log
    domain, so the result never depends on that approximation beyond float32 resolution."""
    B, h, _, m = logK[0].shape
    rmax = [lk.amax(-1, keepdim=True) for lk in logK]  # (B, h, c, 1)
    Kt = [_exp_weights(lk - r) for lk, r in zip(logK, rmax)]  # (B, h, c, m), entries in [0, 1]
    v = torch.zeros((B, h, 1, m), dtype=logK[0].dtype, device=logK[0].device)
    us = [None] * len(spans)
    for _ in range(iters):
        vmax = v.amax(-1, keepdim=True)  # (B, h, 1, 1)
        ev = _scaled(v - vmax).transpose(-1, -2)  # (B, h, m, 1)
        for b, (i, j) in enumerate(spans):
            ssum = Kt[b] @ ev  # (B, h, c, 1)
            lse = rmax[b] + vmax + ssum.log()
            bad = ssum < _TRUST
            if bool(bad.any()):
                lse = torch.where(bad, torch.logsumexp(logK[b] + v, -1, keepdim=True), lse)
            u = log_a[..., i:j, None] - lse
            if valid is not None:
                u = torch.where(valid[..., i:j, None], u, torch.full_like(u, _MASKED_LOG))
            us[b] = u
        # columns: lse_i(log K_ij + u_i) = c + log Σ_i K̃_ij·exp(rmax_i + u_i − c)
        c = torch.stack([(r + u).amax(-2, keepdim=True) for r, u in zip(rmax, us)]).amax(0)  # (B, h, 1, 1)
        tsum = None
        for b in range(len(spans)):
            eu = _scaled(rmax[b] + us[b] - c)  # (B, h, c, 1)
            part = eu.transpose(-1, -2) @ Kt[b]  # (B, h, 1, m)
            tsum = part if tsum is None else tsum + part
        lse = c + tsum.log()
        bad = tsum < _TRUST
        if bool(bad.any()):
            M = S = None
            for b in range(len(spans)):
                s = logK[b] + us[b]
                cm = s.amax(-2, keepdim=True)
                M, S = _combine_lse(M, S, cm, _exp_terms(s - cm).sum(-2, keepdim=True))
            lse = torch.where(bad, M + S.log(), lse)
        v = log_b - lse
    return us, v


def set_attention(
    f: torch.Tensor,
    anchors: torch.Tensor,
    reference: torch.Tensor,
    values: torch.Tensor,
    sigma: float = 0.5,
    eps: float = 0.1,
    iters: int = 5,
    log_m: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    ridge: float = 1e-3,
    nystrom_iters: int = 20,
    chunk_bytes: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """SeT attention of features f (B, h, n, d) with values (B, h, n, dv) → (B, h, n, dv), float32.

    anchors (h, k, d) (normalised here), reference (h, m, k); ``log_m``: the log position filter, broadcastable
    to (B, h, n, m) (None: no filter); ``mask`` (B, n) or (B, h, n), True for real tokens (padded ones get no
    mass and read nothing that matters; their outputs are not defined). See the module docstring.
    ``out``: a float32 tensor of the result's shape (a strided view is fine, e.g. the heads of a token-major
    buffer) that receives the result block by block, without autograd only; it is then what is returned.
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if eps <= 0:
        raise ValueError(f"set_attention: eps must be positive, got {eps}")
    if iters < 1:
        raise ValueError(f"set_attention: iters must be at least 1, got {iters}")
    B, h, n, _ = f.shape
    m = reference.shape[-2]
    if out is not None and torch.is_grad_enabled() and any(
            t.requires_grad for t in (f, anchors, reference, values)):
        raise ValueError("set_attention: out= is for inference only (no autograd)")
    with no_autocast(f):
        f, values = fp32(f), fp32(values)
        z = F.normalize(fp32(anchors), dim=-1)
        root = inverse_sqrt_psd(spherical_gaussian_kernel(z, z, sigma), ridge, nystrom_iters)  # (h, k, k)
        R = root @ fp32(reference).transpose(-1, -2) / eps  # (h, k, m): scores/ε = κ(f, Z)·R
        valid = None
        if mask is not None:
            valid = (mask[:, None, :] if mask.dim() == 2 else mask).expand(B, h, n).bool()
            n_valid = valid.sum(-1, keepdim=True).clamp_min(1).to(f.dtype)
            log_a = torch.where(valid, -torch.log(n_valid), torch.full((), _MASKED_LOG, dtype=f.dtype,
                                                                       device=f.device))
        else:
            log_a = torch.full((B, h, n), -math.log(n), dtype=f.dtype, device=f.device)
        log_b = -math.log(m)
        spans = token_spans(n, B * h * m * 4, chunk_bytes)

        # log K, block by block
        logK = []
        for i, j in spans:
            lk = spherical_gaussian_kernel(f[..., i:j, :], z, sigma) @ R  # (B, h, c, m)
            if valid is not None:
                lk = lk.masked_fill(~valid[..., i:j, None], 0.0)
            logK.append(lk)

        def log_filter(i, j):
            if log_m is None:
                return None
            return log_m[..., i:j, :]

        # Sinkhorn: u from v (rows, local), then v from u (columns, accumulated over blocks)
        if torch.is_grad_enabled() and any(t.requires_grad for t in logK):
            us, v = _sinkhorn_log_blocks(logK, log_a, log_b, valid, spans, iters)
        else:
            us, v = _sinkhorn_scaled_blocks(logK, log_a, log_b, valid, spans, iters)

        # the references collect the tokens: column softmax of log K + log M + u, accumulated over blocks
        M = num = den = None
        for b, (i, j) in enumerate(spans):
            s = logK[b] + us[b]
            lm = log_filter(i, j)
            if lm is not None:
                s = s + lm
            cm = s.amax(-2, keepdim=True).detach()  # (B, h, 1, m)
            w = _exp_weights(s - cm)
            part_num = w.transpose(-1, -2) @ values[..., i:j, :]  # (B, h, m, dv)
            part_den = w.sum(-2, keepdim=True)  # (B, h, 1, m)
            if M is None:
                M, num, den = cm, part_num, part_den
            else:
                new = torch.maximum(M, cm)
                a_old, a_new = _exp_terms(M - new), _exp_terms(cm - new)  # one of them is 1 per column
                num = num * a_old.transpose(-1, -2) + part_num * a_new.transpose(-1, -2)
                den = den * a_old + part_den * a_new
                M = new
        A = num / den.transpose(-1, -2)  # (B, h, m, dv): each reference a convex combination of tokens

        # every token reads the references: row softmax of log K + log M + v
        outs = []
        for b, (i, j) in enumerate(spans):
            r = logK[b] + v
            lm = log_filter(i, j)
            if lm is not None:
                r = r + lm
            w = _exp_weights(r - r.amax(-1, keepdim=True).detach())
            o = (w @ A) / w.sum(-1, keepdim=True)
            if out is not None:
                out[..., i:j, :].copy_(o)
            else:
                outs.append(o)
        if out is not None:
            return out
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
