"""Newton–Schulz pseudo-inverse of SOFT's landmark kernel matrix, in the two released versions.

Iteration: V₀ = α·P, then ``iters`` times V ← 2V − V·P·V, which converges to P⁺ when 0 < α < 2/σ_max(P)².

rule="soft" (plain SOFT, the current released code):
    P = A + 0.01·I; α = 0.9·2 / (max_i Σ_j A_ij)² per matrix (row sums of A, before the shift). The forward
    records no graph; the backward treats the result as an exact inverse: ∂L/∂A = −Vᵀ·G·Vᵀ.
rule="soft_norm" (SOFT-Norm):
    P = A; α = 2 / (max_i Σ_j A_ij)², then while ‖I − P·αP‖₁ > 1.01 (max column abs-sum) and fewer than 10
    tries, α ← α/2; autograd through the iterations (α included, as in the released code). Through all of
    them, that backward is slow and adds nothing: a converged Newton step V ← 2V − V·P·V passes almost no
    gradient back to the iterate it started from (its Jacobian dV·(I − P·V) + (I − V·P)·dV vanishes as V → P⁺
    on P's range, and V stays in P's range), so the gradients of the early iterations arrive as subnormal
    floats, which x86 CPUs process many times slower, and round to nothing in the sum. So the first
    ``iters − GRAD_ITERS`` iterations run without a graph and the graph covers the last ``GRAD_ITERS``, when the
    iterate has converged there (relative change of the last graph-free step ≤ ``GRAD_TRUNCATION_CHANGE``);
    otherwise the iterations run again with the whole graph. ``backward="full"`` always takes the whole graph
    (the reference); the tests hold the two to float rounding.
    ``batch_alpha=False`` (default) takes the max and the norm per matrix, so one image's output does not
    depend on the rest of its batch; ``batch_alpha=True`` takes them over the whole batch, as the released
    code does, for exact agreement with released SOFT-Norm weights on batches.
"""

from __future__ import annotations

import torch

from sofa.ops.common import check_impl, fp32, is_tracing, no_autocast

RULES = ("soft", "soft_norm")
ITERATE_IMPLS = ("batched", "plain")
SOFT_SHIFT = 0.01
MAX_HALVINGS = 10
#: SOFT-Norm's backward: through the last GRAD_ITERS iterations when the iterate has converged before them
GRAD_ITERS = 2
GRAD_TRUNCATION_CHANGE = 1e-4
BACKWARDS = ("auto", "full")


def _iterate(V: torch.Tensor, P: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` Newton–Schulz steps V ← 2V − V·P·V, written plainly (the reference, and the form captured
    graphs and TorchScript hold)."""
    for _ in range(iters):
        V = 2 * V - V @ P @ V
    return V


def _iterate_batched(V: torch.Tensor, P: torch.Tensor, iters: int) -> torch.Tensor:
    """:func:`_iterate` with all the matrices of V and P (..., m, m) (same batch shape) as one batch, each step two
    batched GEMMs: T = V·P, then V ← 2V − T·V as one ``baddbmm`` (the scaling and the subtraction done by the
    GEMM as it writes its result: no separate element-wise passes, no 4-D ``matmul`` reshapes). The same numbers
    to float rounding, which the iteration itself corrects; autograd runs through it as through the plain form."""
    shape, m = V.shape, V.shape[-1]
    V3, P3 = V.reshape(-1, m, m), P.expand(shape).reshape(-1, m, m)
    for _ in range(iters):
        V3 = torch.baddbmm(V3, torch.bmm(V3, P3), V3, beta=2.0, alpha=-1.0)
    return V3.reshape(shape)


def iterate(V: torch.Tensor, P: torch.Tensor, iters: int, *, impl: str = "auto") -> torch.Tensor:
    """``iters`` Newton–Schulz steps V ← 2V − V·P·V from V (..., m, m) on P (..., m, m).

    ``impl``: "batched" (:func:`_iterate_batched`), "plain" (:func:`_iterate`, the reference) or "auto":
    "plain" under a graph capture (:func:`sofa.ops.common.is_tracing`), else "batched"."""
    check_impl("newton iterate", impl, ITERATE_IMPLS)
    if impl == "auto":
        impl = "plain" if is_tracing() or V.shape != P.shape else "batched"
    return _iterate(V, P, iters) if impl == "plain" else _iterate_batched(V, P, iters)


def _iterate_graph_at_the_end(V0: torch.Tensor, P: torch.Tensor, iters: int) -> torch.Tensor:
    """:func:`iterate` with autograd's graph over the last ``GRAD_ITERS`` steps only, when the iterate has
    converged before them; else over all steps (module docstring)."""
    if iters <= GRAD_ITERS:
        return iterate(V0, P, iters)
    with torch.no_grad():
        before = iterate(V0, P, iters - GRAD_ITERS - 1)
        V = iterate(before, P, 1)
        change = (V - before).abs().amax() / V.abs().amax().clamp_min(1e-30)
    if float(change) > GRAD_TRUNCATION_CHANGE:
        return iterate(V0, P, iters)
    return iterate(V, P, GRAD_ITERS)


def _eye_like(A: torch.Tensor) -> torch.Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


class _SoftNewtonInverse(torch.autograd.Function):
    """Plain-SOFT rule: iterate without a graph, back-propagate as through an exact inverse."""

    @staticmethod
    def forward(ctx, A: torch.Tensor, iters: int):
        P = A + SOFT_SHIFT * _eye_like(A)
        alpha = 0.9 * 2 / A.sum(-1).amax(-1) ** 2
        V = iterate(alpha[..., None, None] * P, P, iters)
        ctx.save_for_backward(V)
        return V

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (V,) = ctx.saved_tensors
        Vt = V.transpose(-1, -2)
        return -(Vt @ grad @ Vt), None


def _soft_norm_alpha(A: torch.Tensor, batch_alpha: bool, halvings: int = MAX_HALVINGS) -> torch.Tensor:
    """α of the SOFT-Norm rule, shape (..., 1, 1) (one value broadcast when ``batch_alpha``), at most
    ``halvings`` times halved."""
    row_max = A.sum(-1).amax(-1)  # (...)
    if batch_alpha:
        row_max = row_max.max().expand_as(row_max)
    alpha = 2 / row_max**2
    eye = _eye_like(A)
    with torch.no_grad():  # which power of 1/2 to use is a discrete choice: no gradient flows through it
        scale = torch.ones_like(alpha)
        AA = A @ A
        for _ in range(halvings):
            norm = (eye - (alpha * scale)[..., None, None] * AA).abs().sum(-2).amax(-1)  # (...)
            if batch_alpha:
                norm = norm.max().expand_as(norm)
            too_big = norm > 1.01
            # the early exit only saves work: a matrix within the bound keeps its α in every later try
            if not is_tracing() and not bool(too_big.any()):
                break
            scale = torch.where(too_big, scale * 0.5, scale)
    return (alpha * scale)[..., None, None]


def newton_pinv(
    A: torch.Tensor,
    iters: int = 20,
    rule: str = "soft",
    batch_alpha: bool = False,
    return_residual: bool = False,
    backward: str = "auto",
):
    """Newton–Schulz pseudo-inverse of square matrices A (..., m, m), computed in float32.

    Returns V ≈ (A + 0.01·I)⁻¹ for rule="soft" and V ≈ A⁺ for rule="soft_norm" (see the module docstring);
    with ``return_residual=True`` also ‖I − P·V‖₁ per matrix (max column abs-sum; P is the matrix actually
    inverted), the diagnostic to watch: 20 iterations do not converge for badly conditioned A. ``backward``:
    SOFT-Norm's graph over the last iterations once converged ("auto") or over all of them ("full"); see the
    module docstring.
    """
    if rule not in RULES:
        raise ValueError(f"newton_pinv: rule must be one of {RULES}, got {rule!r}")
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"newton_pinv: expected square matrices (..., m, m), got shape {tuple(A.shape)}")
    if batch_alpha and rule != "soft_norm":
        raise ValueError("newton_pinv: batch_alpha applies to rule='soft_norm' only")
    if backward not in BACKWARDS:
        raise ValueError(f"newton_pinv: backward must be one of {BACKWARDS}, got {backward!r}")
    with no_autocast(A):
        A = fp32(A)
        if rule == "soft":
            V = _SoftNewtonInverse.apply(A, iters)
            P = A + SOFT_SHIFT * _eye_like(A)
        else:
            V0 = _soft_norm_alpha(A, batch_alpha) * A
            full = backward == "full" or not torch.is_grad_enabled() or not A.requires_grad or is_tracing()
            V = iterate(V0, A, iters) if full else _iterate_graph_at_the_end(V0, A, iters)
            P = A
        if return_residual:
            return V, pinv_residual(P, V)
        return V


def newton_pinv_graph(
    A: torch.Tensor, iters: int, normalized: bool, batch_alpha: bool, shift: float = SOFT_SHIFT
) -> torch.Tensor:
    """:func:`newton_pinv` (rule "soft_norm" if ``normalized``, else "soft") of float32 A in plain tensor
    operations, the form captured graphs and TorchScript hold. The plain rule's backward as an exact inverse
    comes from V − V·(P − P̄)·V with P̄ = P detached and V iterated on P̄: the value is V, the gradient
    −Vᵀ·G·Vᵀ. ``shift`` is the plain rule's ``SOFT_SHIFT`` (an argument so that TorchScript reads it as a
    constant)."""
    if normalized:
        return _iterate(_soft_norm_alpha(A, batch_alpha) * A, A, iters)
    P = A + shift * _eye_like(A)
    fixed = P.detach()
    alpha = 0.9 * 2 / A.detach().sum(-1).amax(-1) ** 2
    V = _iterate(alpha[..., None, None] * fixed, fixed, iters)
    return V - V @ (P - fixed) @ V


@torch.no_grad()
def pinv_residual(P: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """‖I − P·V‖₁ per matrix (max column abs-sum): 0 for an exact inverse."""
    P, V = fp32(P), fp32(V)
    return (_eye_like(P) - P @ V).abs().sum(-2).amax(-1)
