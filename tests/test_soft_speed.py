"""The fast forms behind SOFT's speed (issue 19) against their plain references, forward and backward:
the batched Newton–Schulz iteration and the fused linear + GELU of the MLPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sofa.ops.kernels import gaussian_kernel
from sofa.ops.linear import choose_gelu_impl, fused_gelu_ready, linear_gelu
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


needs_fused = pytest.mark.skipif(not fused_gelu_ready(), reason="no oneDNN fused GELU kernel in this build")


@needs_fused
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape,K,N", [((300,), 16, 40), ((2, 257), 64, 256), ((1, 3, 129), 33, 7)])
def test_fused_linear_gelu_matches_linear_then_gelu(approximate, shape, K, N):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, K, generator=g)
    w, b = torch.randn(N, K, generator=g) / K**0.5, torch.randn(N, generator=g)
    want = F.gelu(F.linear(x, w, b), approximate=approximate)
    with torch.inference_mode():
        got = linear_gelu(x, w, b, approximate, impl="onednn_fused")
        auto = linear_gelu(x, w, b, approximate)
    assert got.shape == want.shape and rel(got, want) < 1e-5 and rel(auto, want) < 1e-5
    assert (
        rel(linear_gelu(x, w, None, approximate, impl="onednn_fused"), F.gelu(F.linear(x, w), approximate=approximate))
        < 1e-5
    )


def test_linear_gelu_backward_takes_the_plain_form():
    x = torch.randn(300, 16, requires_grad=True)
    lin = nn.Linear(16, 24)
    assert choose_gelu_impl(x, lin.weight, lin.bias) == "plain"
    got = linear_gelu(x, lin.weight, lin.bias, "tanh")
    ga = torch.autograd.grad(got.square().sum(), [x, lin.weight, lin.bias])
    want = F.gelu(lin(x), approximate="tanh")
    gb = torch.autograd.grad(want.square().sum(), [x, lin.weight, lin.bias])
    assert rel(got, want) < 1e-6 and all(rel(a, b) < 1e-5 for a, b in zip(ga, gb, strict=True))
    with pytest.raises(ValueError, match="inference only"):
        linear_gelu(x, lin.weight, lin.bias, impl="onednn_fused")
    with pytest.raises(ValueError, match="approximate"):
        linear_gelu(x, lin.weight, lin.bias, "erf")


@needs_fused
def test_mlp_fuses_fc1_and_gelu_at_inference_and_counters_and_hooks_still_see_fc1():
    from sofa.models.flops import flop_counter
    from sofa.models.metaformer import Mlp

    torch.manual_seed(0)
    mlp = Mlp(32, 128, act_layer=lambda: nn.GELU(approximate="tanh")).eval()
    x = torch.randn(2, 300, 32)
    want = mlp.fc2(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias), approximate="tanh"))
    with torch.inference_mode():
        assert choose_gelu_impl(x, mlp.fc1.weight, mlp.fc1.bias) == "onednn_fused"
        assert rel(mlp(x), want) < 1e-5
        with flop_counter() as c:  # the counter sees fc1's GEMM
            mlp(x)
    assert c.get_total_flops() == 2 * 600 * 32 * 128 * 2
    seen = []
    mlp.fc1.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    with torch.inference_mode():
        assert rel(mlp(x), want) < 1e-5
    assert seen == [torch.Size([2, 300, 128])]  # a hooked fc1 is called as a module


@needs_fused
@pytest.mark.parametrize("threads", [1, 2])
def test_onednn_linear_runs_onednn_at_any_thread_count(threads):
    """``linear(impl="onednn")`` without autograd calls oneDNN itself: F.conv2d would send this 1×1 convolution to
    the im2col path when torch runs one thread. Same numbers as F.linear; with autograd the differentiable
    convolution, same numbers and gradients."""
    from torch.profiler import profile

    from sofa.ops.linear import linear

    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 300, 48, generator=g), torch.randn(40, 48, generator=g), torch.randn(40, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode(), profile() as prof:
            got = linear(x, w, b, impl="onednn")
    finally:
        torch.set_num_threads(old)
    assert rel(got, F.linear(x, w, b)) < 1e-5
    names = {e.key for e in prof.key_averages()}
    assert not any("slow_conv2d" in n for n in names) and any("convolution_pointwise" in n for n in names)
    xg = x.clone().requires_grad_()
    y = linear(xg, w, b, impl="onednn")
    (gx,) = torch.autograd.grad(y.square().sum(), xg)
    (gx_ref,) = torch.autograd.grad(F.linear(xg, w, b).square().sum(), xg)
    assert rel(y, F.linear(x, w, b)) < 1e-5 and rel(gx, gx_ref) < 1e-5
