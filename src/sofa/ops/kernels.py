"""Gaussian kernels from squared distances."""

from __future__ import annotations

import torch

from sofa.ops.common import fp32, is_tracing, needs_graph, no_autocast
from sofa.ops.numerics import UNDERFLOW_EXPONENT, keep_threshold


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, ``|a|² + |b|² − 2a·b``, clamped at zero.

    a: (..., n, d), b: (..., m, d) → (..., n, m), in float32 (float64 stays float64).
    The expansion can come out slightly negative by rounding; distances are never negative here.
    """
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"squared_distances: feature sizes differ, a has {a.shape[-1]} and b has {b.shape[-1]}")
    with no_autocast(a):
        a, b = fp32(a), fp32(b)
        if a.dtype != b.dtype:
            a, b = a.double(), b.double()
        a2 = a.pow(2).sum(-1, keepdim=True)  # (..., n, 1)
        b2 = b.pow(2).sum(-1).unsqueeze(-2)  # (..., 1, m)
        d = (
            torch.baddbmm(
                (a2 + b2).reshape(-1, a.shape[-2], b.shape[-2]),
                a.reshape(-1, a.shape[-2], a.shape[-1]),
                b.reshape(-1, b.shape[-2], b.shape[-1]).transpose(1, 2),
                alpha=-2.0,
            )
            if a.shape[:-2] == b.shape[:-2]
            else a2 + b2 - 2.0 * a @ b.transpose(-1, -2)
        )
        d = d.reshape(*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-2])
        return d.clamp_min(0.0)


def underflow_to_zero(exponent: torch.Tensor, floor: float = UNDERFLOW_EXPONENT) -> torch.Tensor:
    """``exp(exponent)``, with entries whose exponent is below ``floor`` (``UNDERFLOW_EXPONENT``; an argument so
    that TorchScript reads it as a constant) set to exact zero."""
    return torch.exp(exponent.clamp_min(floor)) * (exponent >= floor)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``exp(−½·dist²(a, b))`` (SOFT's kernel), (..., n, d) × (..., m, d) → (..., n, m), float32.

    Entries too small to matter (below exp(−40)) are exact zeros: see ``sofa.ops.numerics``.
    Without autograd (inference) the same values come from one buffer updated in place (no temporaries the
    size of the kernel: on the CPU each fresh large tensor also costs its page faults). Under a graph capture
    (and in TorchScript) it is :func:`gaussian_kernel_graph`, whose inputs the caller has put in float32.
    """
    if torch.jit.is_scripting():
        return gaussian_kernel_graph(a, b)
    if is_tracing():
        return gaussian_kernel_graph(a, b)
    if a.shape[:-2] == b.shape[:-2] and a.shape[-1] == b.shape[-1]:
        if not needs_graph(a, b):
            return gaussian_kernel_inplace(a, b)
        if a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64):
            return _GaussianKernel.apply(a, b)
    return underflow_to_zero(-0.5 * squared_distances(a, b))


def gaussian_kernel_graph(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``gaussian_kernel`` of inputs of one dtype in plain tensor operations (no shape branches, no autocast
    context, no in-place writes): the form captured graphs and TorchScript hold."""
    a2 = a.pow(2).sum(-1, keepdim=True)
    b2 = b.pow(2).sum(-1).unsqueeze(-2)
    return underflow_to_zero(-0.5 * (a2 + b2 - 2.0 * a @ b.transpose(-1, -2)).clamp_min(0.0))


def gaussian_kernel_inplace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``gaussian_kernel`` for equal batch shapes without autograd: bit-for-bit the same values for every kept
    entry, in four in-place passes over one buffer."""
    with no_autocast(a):
        a, b = fp32(a), fp32(b)
        if a.dtype != b.dtype:
            a, b = a.double(), b.double()
        n, m, d = a.shape[-2], b.shape[-2], a.shape[-1]
        a3, b3 = a.reshape(-1, n, d), b.reshape(-1, m, d)
        a2 = a3.pow(2).sum(-1, keepdim=True)  # (k, n, 1)
        b2 = b3.pow(2).sum(-1).unsqueeze(-2)  # (k, 1, m)
        k = torch.add(a2, b2)  # |a|² + |b|², the buffer every pass below updates
        # squared distances, as squared_distances computes them (out= rather than baddbmm_: FLOP counters see it)
        torch.baddbmm(k, a3, b3.transpose(1, 2), alpha=-2.0, out=k)
        # clamp at 0 as squared_distances does; a distance beyond −2·UNDERFLOW_EXPONENT gives an exponent
        # below it, whose entry becomes zero; capping those at a little more keeps exp() out of its slow range
        k.clamp_(0.0, -2.0 * UNDERFLOW_EXPONENT + 1.0).mul_(-0.5).exp_()
        # keep an entry iff its exponent was ≥ UNDERFLOW_EXPONENT, i.e. iff its value ≥ exp(UNDERFLOW_EXPONENT)
        torch.nn.functional.threshold_(k, keep_threshold(k.dtype), 0.0)
        return k.reshape(*a.shape[:-2], n, m)


class _GaussianKernel(torch.autograd.Function):
    """:func:`gaussian_kernel` with autograd, for equal batch shapes and one float dtype: the forward is the
    in-place one, the backward written out from the kernel alone. With K = exp(a·bᵀ − |a|²/2 − |b|²/2) and
    P = G ⊙ K for the incoming gradient G: ∂L/∂a = P·b − a ⊙ Σ_j P, ∂L/∂b = Pᵀ·a − b ⊙ Σ_i P. One (n, m) tensor
    is saved and one formed in the backward, where autograd through the plain form saves and forms one per
    element-wise step (distances, clamp, scale, exp, the underflow mask): at 65,536 tokens those passes over
    memory were most of SOFT's training step. Entries set to zero by the underflow get no gradient, as in the
    plain form; the clamp of rounding-negative distances (a ≈ b) changes the gradient by rounding only."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        K = gaussian_kernel_inplace(a, b)
        ctx.save_for_backward(a, b, K)
        return K

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, K = ctx.saved_tensors
        P = grad * K
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.baddbmm(
                (-a * P.sum(-1, keepdim=True)).reshape(-1, *a.shape[-2:]),
                P.reshape(-1, *P.shape[-2:]),
                b.reshape(-1, *b.shape[-2:]),
            ).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = torch.baddbmm(
                (-b * P.sum(-2).unsqueeze(-1)).reshape(-1, *b.shape[-2:]),
                P.reshape(-1, *P.shape[-2:]).transpose(1, 2),
                a.reshape(-1, *a.shape[-2:]),
            ).reshape(b.shape)
        return grad_a, grad_b
