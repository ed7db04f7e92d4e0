"""SeT's whole attention in one streaming pass structure: Nyström scores, Sinkhorn, plan-weighted aggregation.

``set_attention`` computes, per head, what :func:`sofa.ops.set.reference.set_attention_reference` computes from
the whole plan (its log is :func:`sofa.ops.set.reference.set_log_plan`) followed by two softmaxes:

    log T = log K + u·1ᵀ + 1·vᵀ (Sinkhorn potentials u, v on log K = scores/ε), log P = log T + log M,
    out = softmax_rows(log P) · (softmax_cols(log P)ᵀ · values)

but over blocks of tokens, holding one N×m matrix per head and no other N×m temporary than one block:

* ``impl="scaling"`` (the choice without autograd, ``_streamed_scaled``): the matrix is K̃ = exp(log K − row max),
  the only N×m exponential taken. Each Sinkhorn iteration is one sweep over it: per block, the row sums K̃·e^(v −
  max v) give the block's row potentials and the same cache-resident block adds its share to the column sums for the
  next v. The last sweep also collects the values into the references (column-normalised weights K̃ ⊙ M̃ times
  per-row factors, one GEMM per block) and one more sweep reads them back (row-normalised, one GEMM per block). K̃
  is read iters + 1 times in all. The position filter M̃ is built per block (for images from its row and column
  factors, ``GridFilter``). A row or column whose scaled sum is too small to trust is recomputed exactly in the log
  domain from rebuilt log-K blocks.
* ``impl="log_domain"`` (the choice with autograd): the matrix is log K, kept for the backward: log-domain Sinkhorn
  with log-sum-exps accumulated block by block (running maximum and sum), the column softmax accumulated the same
  way (as in flash attention), the row softmax local to each block.

Either way each block's temporaries stay in the cache, so the time is proportional to N, and the memory beyond
the inputs and the output is the one N×m matrix and one block.

Two identities make it cheaper: u cancels in the row softmax and v in the column softmax (constants along the
normalised axis), and the Nyström root and the reference fold into one k×m matrix, κ(f, Z)·(κ(Z,Z)^{−1/2}·Yᵀ/ε).

Subnormal floats never appear: every exponential is taken of a shifted argument clamped above the range where
float32's ``exp`` produces subnormals (and where the CPU's exp is many times slower); entries below exp(−40) of
their row's or column's largest are exact zeros, as in SOFT's kernel, and so is any product of two such factors
that falls below exp(−40) before it meets a third.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sofa import switches
from sofa.ops import numerics
from sofa.ops.common import check_impl, fp32, is_tracing, needs_graph, no_autocast
from sofa.ops.linear import linear
from sofa.ops.numerics import MASKED_LOG as _MASKED_LOG
from sofa.ops.numerics import SCALING_HEADROOM as _HEADROOM
from sofa.ops.numerics import TRUST as _TRUST
from sofa.ops.numerics import UNDERFLOW_EXPONENT as _WEIGHT_FLOOR
from sofa.ops.nystrom import inverse_sqrt_psd, spherical_gaussian_kernel
from sofa.ops.position import GridFilter, SequenceFilter

IMPLS = ("scaling", "log_domain", "reference")
# the softmax weights and the terms of the log-sum-exps keep entries ≥ exp(−40) of their largest (numerics)
_LSE_FLOOR = _WEIGHT_FLOOR


def _exp_weights(t: torch.Tensor) -> torch.Tensor:
    """exp(t) for t ≤ 0 (already shifted by its maximum), with entries below exp(−40) set to exact zero.
    ``t`` is overwritten when no autograd is recording (it is always a fresh temporary here)."""
    if not (torch.is_grad_enabled() and t.requires_grad):
        return F.threshold_(t.clamp_min_(_WEIGHT_FLOOR - 1.0).exp_(), _keep_threshold(), 0.0)
    w = torch.exp(t.clamp_min(_WEIGHT_FLOOR - 1.0))
    return F.threshold(w, _keep_threshold(), 0.0)


def _keep_threshold() -> float:
    return numerics.keep_threshold(torch.float32)


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
    """Log-domain Sinkhorn over blocks of rows, two exponentials per entry and iteration; returns every
    iteration's potentials: [u_1 … u_T] as (B, h, n, 1) and [v_0 = 0, v_1 … v_T] as (B, h, 1, m) (u_t from v_{t−1},
    v_t from u_t)."""
    B, h, _, m = logK[0].shape
    v = torch.zeros((B, h, 1, m), dtype=logK[0].dtype, device=logK[0].device)
    u_all, v_all = [], [v]
    for _ in range(iters):
        us = []
        for b, (i, j) in enumerate(spans):
            u = log_a[..., i:j, None] - _lse(logK[b] + v, -1)  # (B, h, c, 1)
            if valid is not None:
                u = torch.where(valid[..., i:j, None], u, torch.full_like(u, _MASKED_LOG))
            us.append(u)
        v = log_b - _column_lse_exact(logK.__getitem__, us, len(spans))  # (B, h, 1, m)
        u_all.append(torch.cat(us, -2))
        v_all.append(v)
    return u_all, v_all


class _LogDomainAttention(torch.autograd.Function):
    """SeT's attention from log K (B, h, n, m), with autograd: the log-domain forward over blocks of tokens and a
    backward written out over the same blocks, so that no graph of the iterations is kept: log K, its gradient,
    the potentials of every iteration (n + m numbers each) and one block of temporaries, instead of several n×m
    tensors saved per iteration (docs/benchmarks.md has the memory and time of SeT's training step).

    Forward (per head): Sinkhorn u_t = log a − LSE_row(log K + v_{t−1}), v_t = log b − LSE_col(log K + u_t);
    the references collect S = softmax_col(log K + u_T + log M), A = Sᵀ·values; the tokens read them,
    W = softmax_row(log K + v_T + log M), out = W·A. Backward, block by block, with the softmaxes rebuilt from
    the saved log-sum-exps and potentials (both LSEs of an iteration are its potentials: LSE_row(log K + v_{t−1})
    = log a − u_t and LSE_col(log K + u_t) = log b − v_t):
    read: ∂r = W ⊙ (∂out·Aᵀ − ⟨∂out, out⟩_row), ∂A = Wᵀ·∂out, ∂v_T = Σ_rows ∂r;
    collect: ∂s = S ⊙ (values·∂Aᵀ − ⟨∂A, A⟩_col), ∂values = S·∂A, ∂u_T = Σ_cols ∂s;
    each iteration, last to first: ∂log K −= C ⊙ ∂v_t (C = exp(log K + u_t + v_t − log b)), ∂u_t −= C·∂v_t,
    then ∂log K −= R ⊙ ∂u_t (R = exp(log K + v_{t−1} + u_t − log a)), ∂v_{t−1} = −Σ_rows R ⊙ ∂u_t.
    Every weight below exp(−40) is an exact zero, as in the forward (no subnormal gradient)."""

    @staticmethod
    def forward(ctx, logK, values, log_a, valid, filt, spans, iters, log_b):
        blocks = [logK[..., i:j, :] for i, j in spans]
        nb = len(spans)
        u_all, v_all = _sinkhorn_log_blocks(blocks, log_a, log_b, valid, spans, iters)
        u, v = u_all[-1], v_all[-1]
        A, l_col = _collect_log(blocks.__getitem__, [u[..., i:j, :] for i, j in spans], filt, spans, values)
        outs, l_rows = zip(*(_read_log(blocks[b], v, filt.log(i, j), A) for b, (i, j) in enumerate(spans)), strict=True)
        out = torch.cat(outs, -2) if nb > 1 else outs[0]
        ctx.filt, ctx.spans, ctx.log_b = filt, spans, log_b
        ctx.save_for_backward(
            logK, values, log_a, valid, A, out, l_col, torch.cat(l_rows, -2), torch.stack(u_all), torch.stack(v_all)
        )
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        logK, values, log_a, valid, A, out, l_col, l_row, U, V = ctx.saved_tensors
        filt, spans, log_b = ctx.filt, ctx.spans, ctx.log_b
        iters = U.shape[0]
        g_out = g_out.to(out.dtype)
        gK = torch.empty_like(logK)
        gV = torch.zeros_like(values) if ctx.needs_input_grad[1] else None
        gA = torch.zeros_like(A)
        gv = torch.zeros_like(V[0])

        def with_filter(t, i, j):
            lm = filt.log(i, j)
            return t if lm is None else t + lm

        for i, j in spans:  # read: out = W·A
            W = _exp_weights(with_filter(logK[..., i:j, :] + V[-1], i, j) - l_row[..., i:j, :])
            go = g_out[..., i:j, :]
            gA += W.transpose(-1, -2) @ go
            gr = W.mul_(go @ A.transpose(-1, -2) - (go * out[..., i:j, :]).sum(-1, keepdim=True))
            gv += gr.sum(-2, keepdim=True)
            gK[..., i:j, :] = gr
        cA = (gA * A).sum(-1).unsqueeze(-2)  # (B, h, 1, m)
        gu = []
        for i, j in spans:  # collect: A = Sᵀ·values
            S = _exp_weights(with_filter(logK[..., i:j, :] + U[-1][..., i:j, :], i, j) - l_col)
            if gV is not None:
                gV[..., i:j, :] = S @ gA
            gs = S.mul_(values[..., i:j, :] @ gA.transpose(-1, -2) - cA)
            gu.append(gs.sum(-1, keepdim=True))
            gK[..., i:j, :] += gs
        for t in range(iters - 1, -1, -1):  # Sinkhorn, last iteration first: U[t] from V[t], V[t + 1] from U[t]
            gv_prev = torch.zeros_like(gv)
            for b, (i, j) in enumerate(spans):
                lk, ut = logK[..., i:j, :], U[t][..., i:j, :]
                C = _exp_weights(lk + ut + V[t + 1] - log_b)
                g_u = (C @ gv.transpose(-1, -2)).neg_()
                if t == iters - 1:
                    g_u += gu[b]
                gK[..., i:j, :] -= C.mul_(gv)
                e = lk + V[t] + ut - log_a[..., i:j, None]
                if valid is not None:  # padded rows: u is a constant there
                    g_u = g_u.masked_fill_(~valid[..., i:j, None], 0.0)
                    e = e.masked_fill_(~valid[..., i:j, None], _MASKED_LOG)
                R = _exp_weights(e).mul_(g_u)
                gK[..., i:j, :] -= R
                gv_prev -= R.sum(-2, keepdim=True)
            gv = gv_prev
        return gK, gV, None, None, None, None, None, None


#: exp(t) for t ≤ 0 with entries below exp(−40) exact zeros, as scaling factors: products of two stay normal
_scaled = _exp_terms


def _times_column(K: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """K·x for a batch of columns x (..., m, 1): the product ``K @ x``, taken as (xᵀ·Kᵀ)ᵀ, a batched row times
    matrix, which the CPU's BLAS runs about twice as fast as a batched matrix times column (docs/benchmarks.md,
    "SeT on long sequences")."""
    return (x.transpose(-1, -2) @ K.transpose(-1, -2)).transpose(-1, -2)


def _keep_large_(t: torch.Tensor) -> torch.Tensor:
    """Entries below exp(−40) of ``t`` (a product of factors in [0, 1]) set to exact zero, in place."""
    return F.threshold_(t, _keep_threshold(), 0.0)


class _Filter:
    """The position filter of one call, block by block of tokens: ``log(i, j)`` is log M for the log-domain
    paths; ``scaled(i, j)`` is (M̃, s) with M̃ = exp(log M − row max) (entries below exp(−40) exact zeros) and
    s = row max − the filter's largest entry (≤ 0), so that M = M̃·exp(s + top). ``log_m`` is None, a tensor
    broadcastable to (B, h, n, m), a :class:`~sofa.ops.position.GridFilter` (built from its two factors) or a
    :class:`~sofa.ops.position.SequenceFilter` (built from the positions): the last two never as the whole
    n×m matrix."""

    def __init__(self, log_m):
        self.grid = log_m if isinstance(log_m, GridFilter) else None
        self.blocks = log_m if isinstance(log_m, SequenceFilter) else None
        self.dense = log_m if isinstance(log_m, torch.Tensor) else None
        if self.grid is not None:
            g = self.grid
            self._rmax, self._cmax = g.rows.amax(-1, keepdim=True), g.cols.amax(-1, keepdim=True)
            self._er, self._ec = _scaled(g.rows - self._rmax), _scaled(g.cols - self._cmax)
            self._top = self._rmax.amax() + self._cmax.amax()
        elif self.blocks is not None:
            self._top = self.blocks.top()
        elif self.dense is not None:
            self._top = self.dense.amax()  # once per call, not per block

    def __bool__(self) -> bool:
        return self.grid is not None or self.blocks is not None or self.dense is not None

    def log(self, i: int, j: int):
        if self.grid is not None:
            return self.grid.log_block(i, j)
        if self.blocks is not None:
            return self.blocks.log_block(i, j)
        return None if self.dense is None else self.dense[..., i:j, :]

    def scaled(self, i: int, j: int):
        if self.grid is not None:
            r, c = self.grid.index(i, j)
            Mt = _keep_large_((self._er[r][:, :, None] * self._ec[c][:, None, :]).reshape(j - i, -1))
            return Mt, self._rmax[r] + self._cmax[c] - self._top
        lm = self.log(i, j)
        mx = lm.amax(-1, keepdim=True)
        return _exp_weights(lm.sub_(mx) if self.blocks is not None else lm - mx), mx - self._top


def _row_lse_exact(lk, v):
    """log Σ_j exp(log K_ij + v_j) of one block, in the log domain (the exact fallback)."""
    return torch.logsumexp(lk + v, -1, keepdim=True)


def _column_lse_exact(log_kernel, us, nb):
    """log Σ_i exp(log K_ij + u_i) over all blocks, in the log domain (the log-domain Sinkhorn's column half,
    and the scaling domain's exact fallback)."""
    M = S = None
    for b in range(nb):
        s = log_kernel(b) + us[b]
        cm = s.amax(-2, keepdim=True).detach()
        M, S = _combine_lse(M, S, cm, _exp_terms(s - cm).sum(-2, keepdim=True))
    return M + S.log()


def _collect_log(log_kernel, us, filt, spans, values):
    """A = colnorm(exp(log K + u + log M))ᵀ·values, (B, h, m, dv): each reference a convex combination of the
    tokens, accumulated over blocks in the log domain with a running column maximum (as in flash attention).
    Returns (A, the column log-sum-exps of log K + u + log M, (B, h, 1, m))."""
    M = num = den = None
    for b, (i, j) in enumerate(spans):
        s = log_kernel(b) + us[b]
        lm = filt.log(i, j)
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
    return num / den.transpose(-1, -2), M + den.log()


def _read_log(lk, v, lm, A):
    """rownorm(exp(log K + v + log M))·A for one block of tokens, in the log domain. Returns (the result, the
    row log-sum-exps of log K + v + log M, (B, h, c, 1))."""
    r = lk + v
    if lm is not None:
        r = r + lm
    mx = r.amax(-1, keepdim=True).detach()
    w = _exp_weights(r - mx)
    den = w.sum(-1, keepdim=True)
    return (w @ A) / den, mx + den.log()


@torch.no_grad()
def _streamed_scaled(log_kernel, nb, spans, log_a, log_b, filt, values, iters, emit):
    """SeT's attention without autograd in the scaling domain, over blocks of tokens, holding one N×m matrix:
    K̃ = exp(log K − row max), exponentiated once. Each Sinkhorn iteration is one sweep over K̃, block by block:
    the row sums K̃·e^(v−max v) give the block's row potentials u, and the same cache-resident block at once adds
    its share K̃ᵀ·e^(rmax+u−c) to the column sums that give v (the shift c is a bound fixed before the sweep, so
    no partial sum ever needs rescaling). The last sweep also collects the values into the references
    (colnorm(K̃ ⊙ M̃ ⊙ row factors)ᵀ·values, one GEMM per block), and one more sweep reads them back
    (rownorm(K̃ ⊙ M̃ ⊙ e^(v−max v))·A, one GEMM per block). So K̃ is read iters + 1 times and no exponential of
    an N×m matrix is taken after the first. A row or column whose scaled sum is too small to trust (``_TRUST``)
    is recomputed exactly in the log domain from rebuilt log-K blocks. ``emit(b, out_block)`` takes each block
    of the result."""
    dv = values.shape[-1]
    Kt, rmax = [], []
    for b in range(nb):
        lk = log_kernel(b)
        r = lk.amax(-1, keepdim=True)  # (B, h, c, 1)
        Kt.append(_exp_weights(lk.sub_(r)))  # entries in [0, 1], each row's largest is 1
        rmax.append(r)
    la = [log_a[..., i:j, None] for i, j in spans]  # (B, h, c, 1)
    la_max = log_a.amax(-1, keepdim=True)[..., None]  # (B, h, 1, 1)
    B, h = log_a.shape[:2]
    m = Kt[0].shape[-1]
    v = torch.zeros((B, h, 1, m), dtype=Kt[0].dtype, device=Kt[0].device)
    us = [None] * nb
    A = None
    for it in range(iters):
        last = it == iters - 1
        vmax = v.amax(-1, keepdim=True)  # (B, h, 1, 1)
        ev = _scaled(v - vmax).transpose(-1, -2)  # (B, h, m, 1)
        c = la_max - vmax + _HEADROOM  # ≥ rmax_i + u_i of every trusted row
        tsum = gmax = coll = qmax = den = None
        exact_rows = False
        for b, (i, j) in enumerate(spans):
            ssum = _times_column(Kt[b], ev)  # (B, h, c, 1)
            g = la[b] - vmax - ssum.log()  # rmax + u: log a − log Σ_j K_ij e^(v_j)
            bad = ssum < _TRUST
            if bool(bad.any()):
                exact = la[b] + rmax[b] - _row_lse_exact(log_kernel(b), v)
                g = torch.where(bad, exact, g)
                exact_rows = True  # such a row's g may exceed c: this iteration's columns are redone exactly
            us[b] = g - rmax[b]
            gb = g.amax(-2, keepdim=True)
            gmax = gb if gmax is None else torch.maximum(gmax, gb)
            eu = _scaled((g - c).clamp_max_(0.0))  # (B, h, c, 1)
            part = eu.transpose(-1, -2) @ Kt[b]  # (B, h, 1, m)
            tsum = part if tsum is None else tsum.add_(part)
            if last:
                # the references collect the tokens: weights K̃ ⊙ M̃ · e^(rmax + u + s − c), normalised by column.
                # K̃ is not needed by Sinkhorn any more: the filtered P = K̃ ⊙ M̃ replaces it, for the reading sweep
                if filt:
                    Mt, s = filt.scaled(i, j)
                    P = _keep_large_(Kt[b].mul_(Mt))
                    q = _scaled((g - c + s).clamp_max_(0.0))
                    d = q.transpose(-1, -2) @ P  # (B, h, 1, m)
                    den = d if den is None else den.add_(d)
                else:
                    P, q = Kt[b], eu
                qb = q.amax(-2, keepdim=True)
                qmax = qb if qmax is None else torch.maximum(qmax, qb)
                part = P.transpose(-1, -2) @ (values[..., i:j, :] * q)  # (B, h, m, dv)
                coll = part if coll is None else coll.add_(part)
        if exact_rows:
            lse = _column_lse_exact(log_kernel, us, nb)
        else:
            lse = c + tsum.log()
            badc = tsum < _TRUST * torch.exp(gmax - c)
            if bool(badc.any()):
                lse = torch.where(badc, _column_lse_exact(log_kernel, us, nb), lse)
        v = log_b - lse
        if last:
            den = (tsum if den is None else den).transpose(-1, -2)  # (B, h, m, 1)
            A = coll / den
            badc = den < _TRUST * qmax.transpose(-1, -2)
            if exact_rows:
                A = _collect_log(log_kernel, us, filt, spans, values)[0]
            elif bool(badc.any()):
                A = torch.where(badc, _collect_log(log_kernel, us, filt, spans, values)[0], A)

    # every token reads the references: weights K̃ ⊙ M̃ · e^(v − max v), normalised by row
    ev = _scaled(v - v.amax(-1, keepdim=True)).transpose(-1, -2)  # (B, h, m, 1)
    rhs = torch.cat([A * ev, ev], -1)  # (B, h, m, dv + 1)
    for b, (i, j) in enumerate(spans):
        r = Kt[b] @ rhs  # (B, h, c, dv + 1); Kt[b] is P = K̃ ⊙ M̃ by now
        den = r[..., dv:]
        o = r[..., :dv] / den
        bad = den < _TRUST
        if bool(bad.any()):
            o = torch.where(bad, _read_log(log_kernel(b), v, filt.log(i, j), A)[0], o)
        emit(b, o)


class ProjectedFeatures:
    """The features f = x·Wᵀ + b of h heads, (B, h, n, d), for :func:`set_attention` to compute block by block of
    tokens, never as the whole map: one token map fewer to allocate (and, where the allocator returns freed
    memory to the system, to fault in again on every call). Each block is projected when its rows of the kernel
    are built, and again only for the exact fallbacks. x: (B, n, C); weight: (h·d, C)."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, heads: int):
        if weight.shape[0] % heads:
            raise ValueError(f"ProjectedFeatures: {weight.shape[0]} output channels do not split into {heads} heads")
        self.x, self.weight, self.bias, self.heads = x, weight, bias, heads
        self.shape = (x.shape[0], heads, x.shape[1], weight.shape[0] // heads)
        self.dtype = x.dtype if x.dtype == torch.float64 else torch.float32  # what block() returns
        self.device = x.device
        self.requires_grad = any(t is not None and t.requires_grad for t in (x, weight, bias))

    def block(self, i: int, j: int) -> torch.Tensor:
        """f of tokens i … j−1, (B, h, j − i, d), float32."""
        y = fp32(linear(self.x[:, i:j], self.weight, self.bias))  # (B, c, h·d)
        return y.unflatten(-1, (self.heads, -1)).transpose(1, 2)


def choose_impl(f, anchors: torch.Tensor, reference: torch.Tensor, values: torch.Tensor) -> str:
    """The ``impl="auto"`` rule: "reference" under a graph capture (:func:`sofa.ops.common.is_tracing`: plain
    tensor operations, no blocks or value-dependent fallbacks), "log_domain" where autograd records a graph
    through any input, "scaling" otherwise."""
    if is_tracing():
        return "reference"
    return "log_domain" if needs_graph(f, anchors, reference, values) else "scaling"


def streams_in_place(x: torch.Tensor) -> bool:
    """Whether a caller may hand :func:`set_attention` its features as :class:`ProjectedFeatures` and its value
    buffer as ``out=``: no autograd is recording, the tokens are float32 and no graph capture is running."""
    if is_tracing():
        return False
    return not torch.is_grad_enabled() and x.dtype == torch.float32


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
    *,
    block_rows: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """SeT attention of features f with values (see the module docstring and docs/methods/setformer.md).

    Args:
        f: (B, h, n, d) features, or a :class:`ProjectedFeatures` (the projection done here, block by block).
        anchors: (h, k, d) Nyström anchors (normalised here). reference: (h, m, k).
        values: (B, h, n, dv).
        sigma, eps, iters, ridge, nystrom_iters: the kernel's bandwidth, Sinkhorn's ε and iterations, the
            Nyström root's ridge and iterations.
        log_m: the log position filter, broadcastable to (B, h, n, m), a :class:`~sofa.ops.position.GridFilter`
            or a :class:`~sofa.ops.position.SequenceFilter` (either built block by block); None: no filter. A
            constant (no gradient).
        mask: (B, n) or (B, h, n), True for real tokens (padded ones get no mass and read nothing that matters;
            their outputs are not defined).
        out: (B, h, n, dv) float32, any strides (e.g. the heads of a token-major buffer), without autograd only:
            receives the result block by block and is returned. It may be ``values`` itself (every value is read
            before the first block of the result is written).
        chunk_bytes: bytes of one block of an (n, m) matrix (None: the ``SOFA_SET_CHUNK_BYTES`` switch, or
            ``numerics.SET_CHUNK_BYTES``); block_rows: rows per block instead (tests use small blocks).
        impl: "auto" (:func:`choose_impl`), "scaling" (no autograd), "log_domain" (gradients of f, anchors,
            reference and values by a backward written out over the blocks; first order only) or "reference".

    Returns:
        (B, h, n, dv), float32 (float64 for float64 inputs).
    """
    check_impl("set_attention", impl, IMPLS)
    if eps <= 0:
        raise ValueError(f"set_attention: eps must be positive, got {eps}")
    if iters < 1:
        raise ValueError(f"set_attention: iters must be at least 1, got {iters}")
    lazy = isinstance(f, ProjectedFeatures)
    grads = needs_graph(f, anchors, reference, values)
    if out is not None and grads:
        raise ValueError("set_attention: out= is for inference only (no autograd)")
    if grads and isinstance(log_m, torch.Tensor) and log_m.requires_grad:
        raise ValueError("set_attention: log_m gets no gradient (the position filter has no parameters); detach it")
    if impl == "auto":
        impl = choose_impl(f, anchors, reference, values)
    if impl == "scaling" and grads:
        raise ValueError("set_attention: impl='scaling' is for inference only (no autograd)")
    if impl == "reference":
        from sofa.ops.set.reference import set_attention_reference

        result = set_attention_reference(
            f.block(0, f.shape[2]) if lazy else f,
            anchors,
            reference,
            values,
            sigma,
            eps,
            iters,
            log_m,
            mask,
            ridge,
            nystrom_iters,
        )
        return result if out is None else out.copy_(result)
    B, h, n, _ = f.shape
    m = reference.shape[-2]
    with no_autocast(values):
        f, values = (f if lazy else fp32(f)), fp32(values)
        z = F.normalize(fp32(anchors), dim=-1)
        root = inverse_sqrt_psd(spherical_gaussian_kernel(z, z, sigma), ridge, nystrom_iters)  # (h, k, k)
        R = root @ fp32(reference).transpose(-1, -2) / eps  # (h, k, m): scores/ε = κ(f, Z)·R
        valid = None
        if mask is not None:
            valid = (mask[:, None, :] if mask.dim() == 2 else mask).expand(B, h, n).bool()
            n_valid = valid.sum(-1, keepdim=True).clamp_min(1).to(f.dtype)
            log_a = torch.where(valid, -torch.log(n_valid), torch.full((), _MASKED_LOG, dtype=f.dtype, device=f.device))
        else:
            log_a = torch.full((B, h, n), -math.log(n), dtype=f.dtype, device=f.device)
        log_b = -math.log(m)
        if block_rows:
            spans = numerics.token_spans(n, 1, block_rows, min_rows=1)
        else:
            chunk = chunk_bytes or switches.SET_CHUNK_BYTES.get() or numerics.SET_CHUNK_BYTES
            spans = numerics.token_spans(n, B * h * m * 4, chunk)

        filt = _Filter(log_m)

        def log_kernel(b):
            """log K of block b, (B, h, c, m); padded rows are zeros (their potential gives them no mass)."""
            i, j = spans[b]
            lk = spherical_gaussian_kernel(f.block(i, j) if lazy else f[..., i:j, :], z, sigma) @ R
            if valid is not None:
                lk = lk.masked_fill(~valid[..., i:j, None], 0.0)
            return lk

        if impl == "scaling":
            outs = [None] * len(spans)

            def emit(b, o):
                if out is not None:
                    i, j = spans[b]
                    out[..., i:j, :].copy_(o)
                else:
                    outs[b] = o

            _streamed_scaled(log_kernel, len(spans), spans, log_a, log_b, filt, values, iters, emit)
            if out is not None:
                return out
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)

        # log domain: log K kept for the backward, log-domain Sinkhorn and softmaxes, the backward by hand
        logK = torch.cat([log_kernel(b) for b in range(len(spans))], -2) if len(spans) > 1 else log_kernel(0)
        result = _LogDomainAttention.apply(logK, values, log_a, valid, filt, spans, iters, log_b)
        return result if out is None else out.copy_(result)
