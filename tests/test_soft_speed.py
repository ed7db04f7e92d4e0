"""The fast forms behind SOFT's speed (issue 19) against their plain references, forward and backward:
the batched Newton–Schulz iteration."""

from __future__ import annotations

import pytest
import torch

from sofa.ops.kernels import gaussian_kernel
from sofa.ops.newton import _iterate, iterate, newton_pinv


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def landmark_matrices(shape, m, d=8, scale=0.6, dtype=torch.float32, seed=0):
    """Gaussian kernel matrices of random landmarks (..., m, m): the matrices SOFT inverts."""
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(*shape, m, d, generator=g, dtype=torch.float64) * scale
    return gaussian_kernel(L, L).to(dtype)


@pytest.mark.parametrize("shape,m", [((3,), 5), ((2, 4), 49), ((1,), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_newton_iteration_matches_the_plain_one(shape, m, dtype):
    A = landmark_matrices(shape, m, dtype=dtype)
    P = A + 0.01 * torch.eye(m, dtype=dtype)
    alpha = 0.9 * 2 / A.sum(-1).amax(-1) ** 2
    V0 = alpha[..., None, None] * P
    want, got = iterate(V0, P, 20, impl="plain"), iterate(V0, P, 20, impl="batched")
    assert got.shape == want.shape and got.dtype == dtype
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-12)
    assert iterate(V0, P, 0, impl="batched").equal(V0)


def test_batched_newton_iteration_backward_matches_the_plain_one():
    """SOFT-Norm back-propagates through the iterations: gradients of both forms agree."""
    A = landmark_matrices((2, 3), 7, dtype=torch.float64).requires_grad_()
    G = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    grads = []
    for impl in ("plain", "batched"):
        (g,) = torch.autograd.grad((iterate(0.05 * A, A, 20, impl=impl) * G).sum(), A)
        grads.append(g)
    assert rel(grads[1], grads[0]) < 1e-10
    assert torch.autograd.gradcheck(
        lambda a: iterate(0.05 * a, a, 6, impl="batched"), (A[0, :1].detach().requires_grad_(),)
    )


@pytest.mark.parametrize("rule", ["soft", "soft_norm"])
def test_newton_pinv_runs_the_batched_iteration_with_the_same_numbers(rule, monkeypatch):
    """newton_pinv in eager mode takes the batched form; forcing the plain one changes nothing beyond rounding
    (forward, and the backward of both rules)."""
    import sofa.ops.newton as newton

    A = landmark_matrices((2, 3), 49).requires_grad_()
    G = torch.randn(2, 3, 49, 49)
    V = newton_pinv(A, 20, rule)
    (g,) = torch.autograd.grad((V * G).sum(), A)
    monkeypatch.setattr(newton, "_iterate_batched", lambda V, P, iters: _iterate(V, P, iters))
    V_plain = newton_pinv(A, 20, rule)
    (g_plain,) = torch.autograd.grad((V_plain * G).sum(), A)
    assert rel(V, V_plain) < 1e-5 and rel(g, g_plain) < 1e-5
    calls = []
    monkeypatch.setattr(newton, "_iterate_batched", lambda V, P, iters: calls.append(1) or _iterate(V, P, iters))
    newton_pinv(A.detach(), 20, rule)
    assert calls  # the eager path goes through the batched form
