"""SOFT's low-rank Gaussian-kernel attention on given queries, landmarks and values (no parameters)."""
from __future__ import annotations

import torch

from sofa.ops._util import fp32, no_autocast
from sofa.ops.kernels import gaussian_kernel
from sofa.ops.newton import SOFT_SHIFT, newton_pinv, pinv_residual


def soft_kernel_attention(
    q: torch.Tensor,
    landmarks: torch.Tensor,
    v: torch.Tensor,
    iters: int = 20,
    normalized: bool = False,
    batch_alpha: bool = False,
    token_mask: torch.Tensor | None = None,
    landmark_mask: torch.Tensor | None = None,
    return_residual: bool = False,
):
    """K1·(A⁺·(K1ᵀ·V)) with K1 = exp(−½ dist²(q, L)) and A = exp(−½ dist²(L, L)), in float32.

    q: (..., N, d) (already scaled by d^{−1/4}), landmarks: (..., m, d), v: (..., N, dv) → (..., N, dv).
    Plain SOFT (``normalized=False``): A⁺ by the released plain rule, (A + 0.01·I)⁻¹. SOFT-Norm: the SOFT-Norm
    rule, then A⁺ ← D·A⁺·D with D = diag(Σ_j A_ij)^{−½}. The association costs O(N·m·(d + dv) + m³).
    ``token_mask`` (..., N) and ``landmark_mask`` (..., m) (True = real) remove padded tokens and empty
    landmarks from the kernels. With ``return_residual`` also ‖I − P·A⁺‖₁ per matrix (P the matrix inverted).
    With as many landmarks as tokens (L = q) and an exact inverse this is exact kernel attention
    exp(−½ dist²(q, q))·V (up to the 0.01 shift of the plain rule).
    """
    with no_autocast(q):
        q, landmarks, v = fp32(q), fp32(landmarks), fp32(v)
        K1 = gaussian_kernel(q, landmarks)  # (..., N, m)
        A = gaussian_kernel(landmarks, landmarks)  # (..., m, m)
        if landmark_mask is not None:
            lm = landmark_mask.unsqueeze(-2).to(A.dtype)  # (..., 1, m)
            K1 = K1 * lm
            A = A * lm * lm.transpose(-1, -2)
        if token_mask is not None:
            K1 = K1 * token_mask.unsqueeze(-1).to(K1.dtype)
        rule = "soft_norm" if normalized else "soft"
        A_inv = newton_pinv(A, iters, rule, batch_alpha)
        residual = None
        if return_residual:
            P = A if normalized else A + SOFT_SHIFT * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
            residual = pinv_residual(P.detach(), A_inv.detach())
        if normalized:
            D = A.sum(-1).clamp_min(1e-12).rsqrt()
            A_inv = D.unsqueeze(-1) * A_inv * D.unsqueeze(-2)
        out = K1 @ (A_inv @ (K1.transpose(-1, -2) @ v))
    return (out, residual) if return_residual else out
