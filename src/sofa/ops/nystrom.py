"""The Nyström embedding of SeT (docs/methods/setformer.md, "Nyström embedding"): tokens into a k-dimensional
RKHS approximation.

κ(a, z) = |a|·exp((⟨a/|a|, z⟩ − 1)/σ²) for unit-norm anchors z (a Gaussian kernel on the sphere, scaled by
the norm), and ψ(a) = κ(Z, Z)^{−1/2}·κ(Z, a), so that ⟨ψ(a), ψ(a′)⟩ approximates κ(a, a′).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sofa.ops.common import fp32, no_autocast


def spherical_gaussian_kernel(a: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """κ(a, z) for a (..., n, d) and unit-norm z (..., k, d) → (..., n, k), float32, written as
    exp(⟨a, z⟩/(|a|·σ²) + log|a| − 1/σ²): one GEMM, one fused multiply-add and one exponential over the (n, k)
    result, and nothing over a but its norms (the same value as :func:`spherical_gaussian_kernel_plain`, which
    takes five passes; SeT's streamed attention computes it for every block of tokens)."""
    with no_autocast(a):
        a, z = fp32(a), fp32(z)
        norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)  # (..., n, 1)
        inv_sigma2 = 1.0 / sigma**2
        scores = a @ z.transpose(-1, -2)  # |a|·cos
        # a zero row gives 1e-30·exp(…) for 0·exp(…), with a finite gradient (log 0 would make it NaN)
        shift = norm.clamp_min(1e-30).log() - inv_sigma2
        return torch.addcmul(shift, scores, inv_sigma2 / norm.clamp_min(1e-6)).exp_()


def spherical_gaussian_kernel_plain(a: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """κ(a, z) in the inputs' dtype, with no autocast handling: the arithmetic of
    :func:`spherical_gaussian_kernel`, written so that TorchScript compiles it."""
    norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    cos = (a / norm.clamp_min(1e-6)) @ z.transpose(-1, -2)
    return norm * torch.exp((cos - 1.0) / sigma**2)


def inverse_sqrt_psd(K: torch.Tensor, ridge: float = 1e-3, iters: int = 20) -> torch.Tensor:
    """(K + ridge·I)^{−1/2} of symmetric positive semi-definite K (..., k, k) by the coupled Newton–Schulz
    iteration, float32.

    Y₀ = K̂/c, Z₀ = I, T = (3I − Z·Y)/2, Y ← Y·T, Z ← T·Z, with c = ‖K̂‖_F so that the spectrum lies in
    (0, 1]; then Z → (K̂/c)^{−1/2}. Differentiable by ordinary autograd, with no eigenvalue gaps to divide by
    (an eigendecomposition's backward is unstable when eigenvalues come close). The ridge bounds the
    condition number, and so the iterations needed.
    """
    with no_autocast(K):
        return inverse_sqrt_psd_plain(fp32(K), ridge, iters)


def inverse_sqrt_psd_plain(K: torch.Tensor, ridge: float, iters: int) -> torch.Tensor:
    """(K + ridge·I)^{−1/2} in K's dtype, with no autocast handling: the iteration of :func:`inverse_sqrt_psd`,
    written so that TorchScript compiles it."""
    k = K.shape[-1]
    eye = torch.eye(k, dtype=K.dtype, device=K.device)
    K = 0.5 * (K + K.transpose(-1, -2)) + ridge * eye
    c = torch.linalg.vector_norm(K.flatten(-2), dim=-1).unsqueeze(-1).unsqueeze(-1)
    Y, Z = K / c, eye.expand_as(K)
    for _ in range(iters):
        T = 1.5 * eye - 0.5 * (Z @ Y)
        Y, Z = Y @ T, T @ Z
    return Z / c.sqrt()


def nystrom_embedding(
    x: torch.Tensor, anchors: torch.Tensor, sigma: float = 0.5, ridge: float = 1e-3, iters: int = 20
) -> torch.Tensor:
    """ψ(x) = κ(Z, Z)^{−1/2} κ(Z, x): x (..., n, d), anchors (..., k, d) (normalised here) → (..., n, k).

    The k×k inverse square root is computed once per call, never per token; cost O(n·k·d).
    """
    with no_autocast(x):
        z = F.normalize(fp32(anchors), dim=-1)
        kzz = spherical_gaussian_kernel_plain(z, z, sigma)  # |z| = 1
        root = inverse_sqrt_psd(kzz, ridge, iters)  # (..., k, k), symmetric
        return spherical_gaussian_kernel_plain(fp32(x), z, sigma) @ root
