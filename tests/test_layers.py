"""sofa.layers.Linear: nn.Linear whose float32 CPU forward on many rows runs through oneDNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sofa import switches
from sofa.layers import Linear, linear
from sofa.ops.linear import choose_impl
from sofa.ops.numerics import LINEAR_MIN_ROWS as MIN_ROWS


def _routes(monkeypatch):
    """Count the calls that take the oneDNN route (a 1×1 convolution: F.conv2d with autograd, oneDNN's own entry
    point without), each as the (1, K, M, 1) map of its rows."""
    import sofa.ops.linear as ol

    calls = []
    real, real_fused = F.conv2d, ol._fused
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))

    def fused(x, *a, **k):
        calls.append((1, x.shape[-1], x.numel() // x.shape[-1], 1))
        return real_fused(x, *a, **k)

    monkeypatch.setattr(ol, "_fused", fused)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_route_equals_f_linear_forward_and_backward(bias, monkeypatch):
    calls = _routes(monkeypatch)
    torch.manual_seed(0)
    lin = Linear(48, 80, bias=bias)
    x = torch.randn(3, 300, 48, requires_grad=True)
    y = lin(x)
    assert calls == [(1, 48, 900, 1)] and y.shape == (3, 300, 80) and y.is_contiguous()
    ref = F.linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, lin.weight] + ([lin.bias] if bias else []), g)
    want = torch.autograd.grad(ref, [x, lin.weight] + ([lin.bias] if bias else []), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # a strided input (e.g. a transposed view) is read correctly
    xt = torch.randn(48, 700).t()
    torch.testing.assert_close(
        linear(xt, lin.weight, lin.bias), F.linear(xt, lin.weight, lin.bias), rtol=1e-5, atol=1e-5
    )


def test_other_cases_are_plain_f_linear(monkeypatch):
    calls = _routes(monkeypatch)
    lin = Linear(16, 8)
    lin(torch.randn(MIN_ROWS - 1, 16))  # few rows
    lin.double()(torch.randn(4 * MIN_ROWS, 16, dtype=torch.float64))  # not float32
    lin.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the dtype: F.linear
        assert lin(torch.randn(4 * MIN_ROWS, 16)).dtype == torch.bfloat16
    with switches.CPU_LINEAR.override("blas"):  # SOFA_CPU_LINEAR=blas
        lin(torch.randn(4 * MIN_ROWS, 16))
    linear(torch.randn(4 * MIN_ROWS, 16), lin.weight, impl="blas")
    assert calls == []


def test_linear_is_an_nn_linear_with_the_same_state():
    lin = Linear(5, 7)
    assert isinstance(lin, torch.nn.Linear) and set(lin.state_dict()) == {"weight", "bias"}


def test_environment_turns_the_route_off(monkeypatch):
    """The switch reads its environment variable (once, at import: a fresh Switch reads it again)."""
    x, w = torch.randn(4 * MIN_ROWS, 16), torch.randn(8, 16)
    monkeypatch.setenv("SOFA_CPU_LINEAR", "blas")
    with switches.CPU_LINEAR.override(switches.Switch("SOFA_CPU_LINEAR", "onednn", "", ("onednn", "blas")).get()):
        assert choose_impl(x, w) == "blas"
    monkeypatch.setenv("SOFA_CPU_LINEAR", "onednn")
    with switches.CPU_LINEAR.override(switches.Switch("SOFA_CPU_LINEAR", "onednn", "", ("onednn", "blas")).get()):
        assert choose_impl(x, w) == ("onednn" if torch.backends.mkldnn.is_available() else "blas")


def test_pinned_impl_runs_that_route(monkeypatch):
    calls = _routes(monkeypatch)
    x, w, b = torch.randn(MIN_ROWS - 1, 16), torch.randn(8, 16), torch.randn(8)  # auto would take F.linear
    torch.testing.assert_close(linear(x, w, b, impl="onednn"), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert calls == [(1, 16, MIN_ROWS - 1, 1)]
    with pytest.raises(ValueError, match="impl must be"):
        linear(x, w, b, impl="mkl")
