"""SOFT's attention written plainly, to test the fast forms against: every kernel entry from its definition,
the whole N×m kernel, one association order, no blocks, no in-place buffers, the input's dtype kept (float64
stays float64)."""

from __future__ import annotations

import torch

from sofa.ops.newton import newton_pinv


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp(−½ |a_i − b_j|²): (..., n, d) × (..., m, d) → (..., n, m)."""
    return torch.exp(-0.5 * (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1))


def soft_kernel_attention_reference(
    q, landmarks, v, iters=20, normalized=False, batch_alpha=False, token_mask=None, landmark_mask=None, q_scale=1.0
):
    """K1·(A⁺·(K1ᵀ·V)) as :func:`sofa.ops.soft.soft_kernel_attention` defines it (same arguments).

    Args:
        q: (..., N, d); landmarks: (..., m, d); v: (..., N, dv); token_mask (..., N); landmark_mask (..., m).

    Returns:
        (..., N, dv), float32 for half-precision inputs, else the inputs' dtype.
    """
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    q, landmarks, v = q.to(dtype) * q_scale, landmarks.to(dtype), v.to(dtype)
    K1, A = _kernel(q, landmarks), _kernel(landmarks, landmarks)
    if landmark_mask is not None:
        lm = landmark_mask.unsqueeze(-2).to(dtype)
        K1, A = K1 * lm, A * lm * lm.transpose(-1, -2)
    if token_mask is not None:
        K1 = K1 * token_mask.unsqueeze(-1).to(dtype)
    A_inv = newton_pinv(A, iters, "soft_norm" if normalized else "soft", batch_alpha, backward="full")
    if normalized:
        D = A.sum(-1).clamp_min(1e-12).rsqrt()
        A_inv = D.unsqueeze(-1) * A_inv * D.unsqueeze(-2)
    return K1 @ (A_inv @ (K1.transpose(-1, -2) @ v))
