"""SOFT's low-rank Gaussian-kernel attention on given queries, landmarks and values (no parameters)."""
from __future__ import annotations

import torch

from sofa.ops._util import fp32, no_autocast, one_pass_active, token_spans
from sofa.ops.kernels import gaussian_kernel
from sofa.ops.newton import SOFT_SHIFT, newton_pinv, pinv_residual

#: bytes of the kernel block K1_b of the streamed (inference) path: it and its products stay in the cache
CHUNK_BYTES = 2 * 2**20


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
    q_scale: float = 1.0,
    out: torch.Tensor | None = None,
    chunk_bytes: int | None = None,
):
    """K1·(A⁺·(K1ᵀ·V)) with K1 = exp(−½ dist²(q, L)) and A = exp(−½ dist²(L, L)), in float32.

    q: (..., N, d) (already scaled by d^{−1/4}), landmarks: (..., m, d), v: (..., N, dv) → (..., N, dv).
    Plain SOFT (``normalized=False``): A⁺ by the released plain rule, (A + 0.01·I)⁻¹. SOFT-Norm: the SOFT-Norm
    rule, then A⁺ ← D·A⁺·D with D = diag(Σ_j A_ij)^{−½}. The association costs O(N·m·(d + dv) + m³).
    ``token_mask`` (..., N) and ``landmark_mask`` (..., m) (True = real) remove padded tokens and empty
    landmarks from the kernels. With ``return_residual`` also ‖I − P·A⁺‖₁ per matrix (P the matrix inverted).
    With as many landmarks as tokens (L = q) and an exact inverse this is exact kernel attention
    exp(−½ dist²(q, q))·V (up to the 0.01 shift of the plain rule).

    ``q_scale`` multiplies q first (the mixers' d^{−1/4}). Without autograd the N×m kernel K1 is never held
    whole: it is built for one block of tokens at a time (``chunk_bytes`` of kernel, 2 MB by default) in two
    passes, Σ K1_bᵀ·V_b over the blocks, then K1_b·(A⁺·that) block by block, each block rebuilt, which costs
    one more kernel evaluation (N·m·d) but keeps every temporary in the cache, and fresh allocations of tens of
    MB (each page-faulted anew on the CPU) out of the loop: the time stays linear in N at every size. q and v
    may then be strided views (e.g. the heads of (B, N, h·d) token tensors), and ``out``, a float32 tensor of
    the result's shape (any strides, e.g. the heads of a token-major buffer), receives the result and is
    returned; it may be ``q`` or ``v`` itself (each block of the result is written after its kernel block is
    built, and v is read in the first pass only). With autograd, or within :func:`one_pass`, one pass over the whole kernel (with autograd ``out``
    must be None).
    """
    graph = torch.is_grad_enabled() and any(t.requires_grad for t in (q, landmarks, v))
    if out is not None and graph:
        raise ValueError("soft_kernel_attention: out= is for inference only (no autograd)")
    streamed = not graph and not one_pass_active()
    with no_autocast(q):
        q, landmarks, v = fp32(q), fp32(landmarks), fp32(v)
        A = gaussian_kernel(landmarks, landmarks)  # (..., m, m)
        lm = None
        if landmark_mask is not None:
            lm = landmark_mask.unsqueeze(-2).to(A.dtype)  # (..., 1, m)
            A = A * lm * lm.transpose(-1, -2)
        tm = None if token_mask is None else token_mask.unsqueeze(-1).to(A.dtype)  # (..., N, 1)
        rule = "soft_norm" if normalized else "soft"
        A_inv = newton_pinv(A, iters, rule, batch_alpha)
        residual = None
        if return_residual:
            P = A if normalized else A + SOFT_SHIFT * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
            residual = pinv_residual(P.detach(), A_inv.detach())
        if normalized:
            D = A.sum(-1).clamp_min(1e-12).rsqrt()
            A_inv = D.unsqueeze(-1) * A_inv * D.unsqueeze(-2)

        def kernel(i: int, j: int) -> torch.Tensor:  # K1 for tokens i..j, masked
            qb = q[..., i:j, :]
            K = gaussian_kernel(qb * q_scale if q_scale != 1.0 else qb, landmarks)
            if lm is not None:
                K = K * lm if graph else K.mul_(lm)
            if tm is not None:
                K = K * tm[..., i:j, :] if graph else K.mul_(tm[..., i:j, :])
            return K

        N, m = q.shape[-2], landmarks.shape[-2]
        if not streamed:
            K1 = kernel(0, N)
            result = K1 @ (A_inv @ (K1.transpose(-1, -2) @ v))
            if out is not None:
                result = out.copy_(result)
        else:
            batch = max(1, A.numel() // (m * m))
            spans = token_spans(N, batch * m * q.element_size(), chunk_bytes or CHUNK_BYTES)
            KtV = None
            for i, j in spans:
                part = kernel(i, j).transpose(-1, -2) @ v[..., i:j, :]
                KtV = part if KtV is None else KtV.add_(part)
            W = A_inv @ KtV  # (..., m, dv)
            if out is None:
                out = torch.empty((*W.shape[:-2], N, W.shape[-1]), dtype=W.dtype, device=W.device)
            for i, j in spans:
                out[..., i:j, :] = kernel(i, j) @ W
            result = out
    return (result, residual) if return_residual else result
