"""SOFT's plain graph forms (what torch.fx, TorchScript, torch.export, ONNX and torch.compile capture) against the
eager forms: the same values and, for the Newton inverse, the same gradients."""

from __future__ import annotations

import pytest
import torch

from sofa.ops.newton import newton_pinv, newton_pinv_graph
from sofa.ops.soft import soft_kernel_attention
from sofa.ops.soft.attention import soft_kernel_attention_graph


def landmark_kernel(m: int = 6, batch: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    L = torch.randn(batch, m, 4, dtype=torch.float64)
    return torch.exp(-0.5 * torch.cdist(L, L) ** 2)


@pytest.mark.parametrize("rule, batch_alpha", [("soft", False), ("soft_norm", False), ("soft_norm", True)])
def test_newton_graph_matches_eager_values_and_gradients(rule, batch_alpha):
    A = landmark_kernel()
    G = torch.randn_like(A)
    grads = []
    for fn in (
        lambda a: newton_pinv(a, 20, rule, batch_alpha),
        lambda a: newton_pinv_graph(a, 20, rule == "soft_norm", batch_alpha),
    ):
        a = A.clone().requires_grad_(True)
        V = fn(a)
        (V * G).sum().backward()
        grads.append((V.detach(), a.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-12, atol=1e-12)


def test_newton_graph_softnorm_halves_alpha_like_eager():
    """One matrix needs more halvings than the other: the graph form runs every try, eager stops early."""
    A = landmark_kernel(batch=2)
    A[1] = A[1] * 50.0
    torch.testing.assert_close(newton_pinv_graph(A, 20, True, False), newton_pinv(A, 20, "soft_norm"), rtol=0, atol=0)


@pytest.mark.parametrize("normalized", [False, True])
def test_kernel_attention_graph_matches_eager(normalized):
    torch.manual_seed(1)
    q, lm, v = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 40, 8)
    want = soft_kernel_attention(q, lm, v, 20, normalized, q_scale=0.7, block_rows=16)
    got = soft_kernel_attention_graph(q, lm, v, 20, normalized, False, None, None, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
