"""Every token mixer: shapes, any spatial size, sequences with masks, half precision, gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sofa import switches
from sofa.mixers import (
    Identity,
    Pooling,
    SeTAttention,
    SoftAttention,
    SoftmaxAttention,
    bounded_grid,
    build_mixer,
)

DIM, HEADS = 64, 2
KINDS = ["pool", "identity", "soft", "soft_norm", "set", "attn"]


def make(kind: str, **kw):
    return build_mixer(kind, DIM, None if kind in ("pool", "identity") else HEADS, **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hw", [(14, 14), (9, 23), (5, 3), (1, 1)])
def test_image_shapes_any_size(kind, hw):
    x = torch.randn(2, hw[0] * hw[1], DIM)
    y = make(kind)(x, hw)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", KINDS)
def test_sequences_with_padding_mask(kind):
    """Real tokens' outputs do not depend on what the padding holds; padded outputs are zero."""
    m = make(kind).eval()
    x = torch.randn(2, 37, DIM)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[0, 25:] = False
    x2 = x.clone()
    x2[0, 25:] = 50 * torch.randn(12, DIM)
    y, y2 = m(x, mask=mask), m(x2, mask=mask)
    torch.testing.assert_close(y[0, :25], y2[0, :25], atol=1e-5, rtol=1e-5)
    assert (y[0, 25:] == 0).all()
    # and a sequence padded to a longer length gives the outputs of the same sequence unpadded
    torch.testing.assert_close(m(x[:1, :25])[0], y[0, :25], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_outputs(kind, dtype):
    m = make(kind)
    x = torch.randn(2, 12 * 10, DIM) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.to(dtype), (12, 10))
    assert torch.isfinite(y.float()).all()
    y = m.to(dtype)(x.to(dtype), (12, 10))  # the whole module in half precision
    assert y.dtype == dtype and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("kind", ["soft", "soft_norm", "set", "attn"])
def test_gradients_reach_every_parameter(kind):
    m = make(kind) if kind != "attn" else SoftmaxAttention(DIM, HEADS, sr_ratio=2)
    x = torch.randn(2, 16 * 12, DIM, requires_grad=True)
    m(x, (16, 12)).pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_pooling_is_avgpool_minus_input_without_padding_counted():
    x = torch.arange(9.0).view(1, 9, 1)
    y = Pooling(3)(x, (3, 3))
    # the corner (0,0) averages the 2×2 window {0, 1, 3, 4} = 2.0; minus itself (0) → 2.0
    assert y[0, 0, 0].item() == pytest.approx(2.0)
    assert y[0, 4, 0].item() == pytest.approx(0.0)  # the centre averages all nine: mean 4 − 4
    assert torch.equal(Identity()(x, (3, 3)), x)


def test_bounded_landmarks_equal_stride_landmarks_within_the_bound():
    torch.manual_seed(0)
    stride = SoftAttention(DIM, HEADS, landmark_stride=4, dwconv_kernel=5)
    bounded = SoftAttention(DIM, HEADS, landmark_stride=4, dwconv_kernel=5, max_landmarks=49)
    bounded.load_state_dict(stride.state_dict())
    x = torch.randn(2, 24 * 28, DIM)  # grid 6×7 = 42 ≤ 49
    torch.testing.assert_close(bounded(x, (24, 28)), stride(x, (24, 28)))
    x = torch.randn(1, 64 * 64, DIM)  # grid 16×16 = 256 > 49: pooled to 7×7
    assert stride.num_landmarks((64, 64)) == 256 and bounded.num_landmarks((64, 64)) == 49
    assert not torch.allclose(bounded(x, (64, 64)), stride(x, (64, 64)))


def test_bounded_grid_respects_bound_and_aspect():
    for gh, gw in [(14, 14), (10, 20), (100, 3), (1, 500), (7, 7)]:
        mh, mw = bounded_grid(gh, gw, 49)
        assert mh * mw <= 49 and mh <= gh and mw <= gw
    assert bounded_grid(14, 14, 49) == (7, 7) and bounded_grid(6, 7, 49) == (6, 7)


def test_soft_landmarks_are_strided_convolution_of_queries():
    m = SoftAttention(DIM, HEADS, landmark_stride=4)
    q = torch.randn(1, 8 * 12, HEADS * 32)  # tokens; head k is channels 32k … 32k+31
    L = m.image_landmarks(q, 8, 12)
    assert L.shape == (1, HEADS, 2 * 3, 32)
    # landmark (0, 1) of each head is the 4×4 patch at rows 0–3, columns 4–7 of that head's queries, contracted
    # with the one shared filter, scaled by d^(-1/4) as the queries are
    for k in range(HEADS):
        patch = q[0].view(8, 12, HEADS, 32)[0:4, 4:8, k]  # (4, 4, d)
        expected = torch.einsum("ijc,ocij->o", patch, m.landmark.weight) / 32**0.25
        torch.testing.assert_close(L[0, k, 1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride, max_landmarks", [(3, None), (1, 4)])
def test_soft_sequence_landmarks_are_segment_means_of_the_real_tokens(stride, max_landmarks):
    """Each sequence's n real tokens, in order, split into min(⌈n/r⌉, max) segments (token k in segment
    ⌊k·m/n⌋); a landmark is its segment's mean query; padding takes no part, and missing landmarks are invalid."""
    m = SoftAttention(DIM, HEADS, landmark_stride=stride, max_landmarks=max_landmarks, sequence_only=True)
    q = torch.randn(3, HEADS, 11, 32)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False  # 7 real tokens
    mask[2, ::2] = False  # 5 real tokens, interleaved with padding
    L, valid = m.sequence_landmarks(q, mask)
    for b in range(3):
        real = mask[b].nonzero().flatten()
        n = len(real)
        m_b = min(-(-n // stride), max_landmarks or n)
        segment = torch.arange(n) * m_b // n
        for j in range(L.shape[2]):
            if j < m_b:
                expected = q[b][:, real[segment == j]].mean(1)
                torch.testing.assert_close(L[b, :, j], expected, atol=1e-6, rtol=1e-6)
            assert bool(valid[b, j]) == (j < m_b)


def test_soft_residual_is_reported():
    m = SoftAttention(DIM, HEADS, landmark_stride=2)
    m.record_residual = True
    m(torch.randn(1, 16 * 16, DIM), (16, 16))
    assert m.last_residual is not None and m.last_residual.item() >= 0


def test_set_implied_attention_is_nonnegative_with_unit_rows():
    m = SeTAttention(DIM, HEADS, num_refs=16)
    x = torch.randn(2, 10 * 9, DIM)
    att = m.attention(x, (10, 9))
    assert att.shape == (2, HEADS, 90, 90) and (att >= 0).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(2, HEADS, 90), atol=1e-5, rtol=0)
    # sequences: with a mask, real rows still sum to 1
    mask = torch.ones(2, 90, dtype=torch.bool)
    mask[1, 60:] = False
    att = m.attention(x, mask=mask)
    torch.testing.assert_close(att[1, :, :60].sum(-1), torch.ones(HEADS, 60), atol=1e-5, rtol=0)
    assert att[1, :, :60, 60:].abs().max() < 1e-20  # nothing read from padding


def test_set_output_is_the_plan_aggregation():
    """out = rownorm(T⊙M)·(colnorm(T⊙M)ᵀ·u) before the output projection, checked from the plan."""
    m = SeTAttention(DIM, HEADS, num_refs=9, lepe=False)
    m.proj = torch.nn.Identity()
    x = torch.randn(1, 6 * 6, DIM)
    T = m.log_plan(x, (6, 6)).exp()
    u = m.u(x).view(1, 36, HEADS, 32).transpose(1, 2)
    expected = (T / T.sum(-1, keepdim=True)) @ ((T / T.sum(-2, keepdim=True)).transpose(-1, -2) @ u)
    torch.testing.assert_close(m(x, (6, 6)), expected.transpose(1, 2).reshape(1, 36, DIM), atol=1e-5, rtol=1e-4)


def test_softmax_attention_matches_materialized_and_reference():
    m = SoftmaxAttention(DIM, HEADS)
    mm = SoftmaxAttention(DIM, HEADS, impl="materialized")
    mm.load_state_dict(m.state_dict())
    x = torch.randn(2, 50, DIM)
    torch.testing.assert_close(m(x), mm(x), atol=1e-5, rtol=1e-5)
    q = m.q(x).view(2, 50, HEADS, 32).transpose(1, 2)
    k, v = (t.view(2, 50, HEADS, 32).transpose(1, 2) for t in m.kv(x).chunk(2, -1))
    ref = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, -1) @ v
    torch.testing.assert_close(m(x), m.proj(ref.transpose(1, 2).reshape(2, 50, DIM)), atol=1e-5, rtol=1e-5)


def test_errors_say_what_was_expected():
    m = SoftAttention(DIM, HEADS)
    with pytest.raises(ValueError, match="10x10 = 100 tokens, but the input has N = 99"):
        m(torch.randn(1, 99, DIM), (10, 10))
    with pytest.raises(ValueError, match="tokens \\(B, N, C\\)"):
        m(torch.randn(99, DIM), (9, 11))
    with pytest.raises(ValueError, match="square"):
        SeTAttention(DIM, HEADS, num_refs=10)(torch.randn(1, 16, DIM), (4, 4))
    with pytest.raises(ValueError, match="unknown mixer"):
        build_mixer("fancy", DIM, HEADS)


class _SubnormalScan(TorchDispatchMode):
    """Counts subnormal floats in the output of every operator run under it (forward and autograd's backward)."""

    # fresh buffers hold whatever memory held; views compute nothing
    UNINITIALISED = {
        torch.ops.aten.empty,
        torch.ops.aten.empty_like,
        torch.ops.aten.new_empty,
        torch.ops.aten.new_empty_strided,
        torch.ops.aten.empty_strided,
    }

    def __init__(self):
        super().__init__()
        self.hits: dict = {}
        self.values = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.UNINITIALISED or func.is_view:
            return out
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                self.values += t.numel()
                a = t.detach().abs()
                n = int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())
                if n:
                    self.hits[str(func)] = self.hits.get(str(func), 0) + n
        return out


@pytest.mark.parametrize("kind", ["soft", "soft_norm", "set", "attn"])
def test_no_operator_makes_subnormal_floats(kind):
    """Subnormal floats make CPU arithmetic ~20× slower (the released SOFT code's CPU slowdown): no operator of
    a mixer's inference or training step may produce one, on inputs spread wide enough that the kernels and
    transport plans reach far below float32's smallest normal number."""
    with switches.SET_CHUNK_BYTES.override(16 * 1024):  # SeT: many blocks of rows, merged log-sum-exps
        _scan_subnormals(kind)


def _scan_subnormals(kind):
    torch.manual_seed(0)
    m = make(kind)
    x = torch.randn(1, 24 * 24, 64) * 3.0
    scan = _SubnormalScan()
    m.eval()
    with torch.no_grad():
        ref = m(x, hw=(24, 24))  # fresh buffers written first, so the views the scan reads are initialised
    with torch.inference_mode(), scan:
        m(x, hw=(24, 24))
    assert scan.hits == {}, f"{kind} inference: operators that produced subnormal floats: {scan.hits}"
    m.train()
    xg = x.clone().requires_grad_(True)
    with scan:
        (m(xg, hw=(24, 24)) * torch.randn_like(ref) * 1e-3).sum().backward()
    if kind != "soft_norm":
        assert scan.hits == {}, f"{kind} training: operators that produced subnormal floats: {scan.hits}"
    else:
        # SOFT-Norm back-propagates through its 20 Newton iterations (as released): products of small
        # gradients with kernel entries near exp(−40) give a few subnormals in the backward of its m×m
        # matmuls; a handful per million values, with no measurable effect on the step's time (flush on/off
        # 1.06 and 0.98 at 56² and 112², docs/benchmarks.md)
        assert sum(scan.hits.values()) < 2e-3 * scan.values, (scan.hits, scan.values)


@pytest.mark.parametrize("kind", ["soft", "soft_norm"])
def test_soft_inference_path_equals_the_autograd_path(kind):
    """Without autograd SOFT streams its kernel over token blocks into a token-major buffer; with autograd it
    runs the one-pass form: the same outputs (and the same residual diagnostic)."""
    torch.manual_seed(0)
    m = make(kind, landmark_stride=4).eval()
    m.record_residual = True
    x = torch.randn(2, 30 * 27, DIM)
    with torch.no_grad(), switches.SOFT_CHUNK_BYTES.override(64 * 1024):  # many blocks at this size
        fast = m(x, hw=(30, 27))
        r_fast = m.last_residual
    slow = m(x.requires_grad_(), hw=(30, 27))
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r_fast, m.last_residual)


def test_set_inference_path_equals_the_autograd_path_over_many_blocks():
    """Without autograd SeT rebuilds its log-kernel blocks where it reads them and runs a scaling-domain
    Sinkhorn; with autograd it keeps them and runs the log domain: the same outputs, over many blocks."""
    torch.manual_seed(0)
    m = make("set").eval()
    x = torch.randn(2, 40 * 37, DIM) * 2.0
    with switches.SET_CHUNK_BYTES.override(16 * 1024):
        with torch.no_grad():
            fast = m(x, hw=(40, 37))
        slow = m(x.requires_grad_(), hw=(40, 37))
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-5)
