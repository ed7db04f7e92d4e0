"""The fused CPU inference path of the PoolFormer block (sofa.ops.fused_mlp): same results as the textbook block
and GroupNorm, with both kernel sets (oneDNN fused post-ops, plain aten), over ragged chunks, under autocast and
torch.compile; the packed-weight cache follows in-place and replaced weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sofa import switches
from sofa.ops.fused_mlp import choose_impl, chunk_rows, metaformer_mlp_, onednn_ready, sample_moments

CL = torch.channels_last


def _params(C, hidden, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        fc1_w=torch.randn(hidden, C, 1, 1, generator=g) * 0.3,
        fc1_b=torch.randn(hidden, generator=g),
        norm_w=torch.randn(C, generator=g),
        norm_b=torch.randn(C, generator=g),
        ls=torch.randn(C, generator=g),
        fc2_w=torch.randn(C, hidden, 1, 1, generator=g) * 0.2,
        fc2_b=torch.randn(C, generator=g),
    )


def _reference(x, p, eps=1e-5):
    """The released block's MLP half in float64: x + ls·fc2(GELU(fc1(GroupNorm(x))))."""
    x = x.double()
    q = {k: v.double() for k, v in p.items()}
    n = F.group_norm(x, 1, q["norm_w"], q["norm_b"], eps)
    h = F.conv2d(F.gelu(F.conv2d(n, q["fc1_w"], q["fc1_b"])), q["fc2_w"], q["fc2_b"])
    return x + q["ls"].view(-1, 1, 1) * h


def _run(x, p, chunk_bytes, eps=1e-5, impl="auto"):
    mean, var = sample_moments(x)
    y = x.clone(memory_format=CL)
    assert (
        metaformer_mlp_(
            y,
            mean,
            torch.rsqrt(var + eps),
            p["fc1_w"],
            p["fc1_b"],
            p["norm_w"],
            p["norm_b"],
            p["ls"],
            p["fc2_w"],
            p["fc2_b"],
            chunk_bytes,
            impl,
        )
        is None
    )
    return y


KERNELS = ["onednn", "aten"]


@pytest.fixture(params=KERNELS)
def kernel(request):
    """The kernel set, pinned for the whole test through the ``SOFA_CPU_MLP`` switch (models) and ``impl=``."""
    if request.param == "onednn" and not onednn_ready():
        pytest.skip("this PyTorch build has no oneDNN fused convolution kernels")
    with switches.CPU_MLP.override(request.param):
        assert choose_impl() == request.param
        yield request.param


@pytest.mark.parametrize("shape", [(3, 16, 9, 11), (1, 8, 1, 1), (2, 24, 5, 1)])
def test_fused_mlp_equals_the_released_mlp_over_ragged_chunks(shape, kernel):
    """In place, any number of chunks (297 tokens in chunks of 64 → 5 chunks of 60 and 57), single tokens."""
    torch.manual_seed(0)
    B, C, H, W = shape
    x = (torch.randn(shape) * 2 + 1).contiguous(memory_format=CL)
    p = _params(C, 4 * C)
    want = _reference(x, p)
    for chunk_bytes in (1, 64 * 4 * C * 4, 1 << 30):  # the smallest chunks (64 tokens), 64 tokens, one chunk
        y = _run(x, p, chunk_bytes, impl=kernel)
        assert y.is_contiguous(memory_format=CL)
        torch.testing.assert_close(y.double(), want, rtol=2e-5, atol=2e-5)


def test_chunks_have_at_most_two_lengths():
    for tokens in (1, 63, 297, 25088, 1568, 49 * 8):
        for hidden in (16, 256, 1280):
            rows = chunk_rows(tokens, hidden, 4, 1 << 20)
            lengths = {min(rows, tokens - i) for i in range(0, tokens, rows)}
            assert len(lengths) <= 2 and rows * hidden * 4 <= max(1 << 20, 64 * hidden * 4)
    assert chunk_rows(25088, 256, 4, 1 << 20) == 896  # 28 equal chunks rather than 25 ragged ones


@pytest.mark.parametrize("shape", [(4, 8, 6, 5), (2, 64, 8, 8), (3, 5, 7, 1), (2, 3, 256, 256)])
def test_sample_moments_match_group_norm_statistics(shape):
    """Per-sample sizes with 16, 64 (the most parts), 1 (odd) and 64 parts of 3072 values."""
    x = (torch.randn(shape) * 3 + 100).contiguous(memory_format=CL)  # a large mean: no cancellation
    mean, var = sample_moments(x)
    v64, m64 = torch.var_mean(x.double().flatten(1), dim=1, correction=0)
    torch.testing.assert_close(mean.double(), m64, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), v64, rtol=1e-4, atol=0)
    torch.testing.assert_close(sample_moments(x.contiguous())[1], var)
    compiled = torch.compile(sample_moments, fullgraph=True)(x)
    torch.testing.assert_close(compiled[0].double(), m64, rtol=1e-6, atol=0)
    torch.testing.assert_close(compiled[1].double(), v64, rtol=1e-4, atol=0)


def test_packed_weights_follow_in_place_and_replaced_weights(kernel):
    """The folded/packed weights are cached per fc1 weight: an optimiser step (in place) or a replaced tensor
    must be seen on the next call, and weights made under inference_mode (no version counter) still work."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 7).contiguous(memory_format=CL)
    p = _params(8, 32)
    torch.testing.assert_close(_run(x, p, 1 << 20).double(), _reference(x, p), rtol=2e-5, atol=2e-5)
    for name in p:  # every tensor the fold reads, changed in place
        with torch.no_grad():
            p[name].mul_(1.5)
        torch.testing.assert_close(_run(x, p, 1 << 20).double(), _reference(x, p), rtol=2e-5, atol=2e-5)
    p["ls"] = torch.randn(8)  # replaced
    torch.testing.assert_close(_run(x, p, 1 << 20).double(), _reference(x, p), rtol=2e-5, atol=2e-5)
    with torch.inference_mode():
        q = {k: v.clone() for k, v in p.items()}
        torch.testing.assert_close(_run(x, q, 1 << 20).double(), _reference(x, q), rtol=2e-5, atol=2e-5)


def test_fused_mlp_refuses_what_it_cannot_run():
    p = _params(8, 32)
    x = torch.randn(2, 8, 4, 4)  # NCHW
    with pytest.raises(ValueError, match="channels-last float32"):
        metaformer_mlp_(x, torch.zeros(2), torch.ones(2), *p.values(), 1 << 20)


def test_onednn_switch_off_by_environment(monkeypatch):
    monkeypatch.setenv("SOFA_CPU_MLP", "aten")
    fresh = switches.Switch("SOFA_CPU_MLP", "onednn", "", ("onednn", "aten"))  # what the import reads
    assert fresh.get() == "aten"
    with switches.CPU_MLP.override(fresh.get()):
        assert choose_impl() == "aten"
    with pytest.raises(ValueError, match="impl must be"):
        _run(torch.randn(1, 8, 2, 2).contiguous(memory_format=CL), _params(8, 32), 1 << 20, impl="mkl")


def _model(mixers, **kw):
    from sofa.models.metaformer import MetaFormer

    torch.manual_seed(0)
    m = MetaFormer(depths=(2, 1, 3, 1), dims=(16, 24, 32, 40), token_mixers=mixers, num_classes=7, **kw).eval()
    with torch.no_grad():  # LayerScales and affines away from their initial values, so every term matters
        for n, t in m.named_parameters():
            if "layer_scale" in n or "norm" in n:
                t.copy_(torch.randn_like(t))
    return m


@pytest.mark.parametrize("mixers", ["pool", ("pool", "identity", "pool", "identity")])
def test_model_inference_path_equals_the_textbook_model(mixers, kernel):
    """A whole model on the inference path, against the same model's textbook blocks (impl="reference"):
    logits and stage maps."""
    from sofa.models.metaformer import MetaFormerBlock

    m = _model(mixers)
    x = torch.randn(3, 3, 61, 45)
    chosen = []
    blocks = [b for b in m.modules() if isinstance(b, MetaFormerBlock)]
    hooks = [b.register_forward_pre_hook(lambda b, a: chosen.append(b.chosen_impl(a[0]))) for b in blocks]
    with torch.no_grad():
        y = m(x)
        feats = m.forward_intermediates(x, intermediates_only=True)
    for h in hooks:
        h.remove()
    assert chosen == ["fused_cpu"] * (2 * 7)  # every block, both calls
    for blk in blocks:
        blk.impl = "reference"
    y_ref = m(x).detach()
    feats_ref = [f.detach() for f in m.forward_intermediates(x, intermediates_only=True)]
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(feats, feats_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_inference_path_only_without_autograd_and_in_float32():
    from timm.layers import DropPath

    from sofa.models.metaformer import MetaFormerBlock

    blk = MetaFormerBlock(8, "pool").eval()
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    with torch.no_grad():
        assert blk.chosen_impl(x) == "fused_cpu"
        assert blk.chosen_impl(x.contiguous()) == "folded"  # NCHW
        assert blk.chosen_impl(x.bfloat16()) == "folded"
        with switches.ONE_PASS.override(True):  # the FLOP counter's one-pass forms
            assert blk.chosen_impl(x) == "folded"
    assert blk.chosen_impl(x) == "folded"  # autograd on
    y = blk(x.requires_grad_())
    assert y.requires_grad
    blk.train()
    blk.drop_path = DropPath(0.5)  # an active drop in training mode: never the inference path
    with torch.no_grad():
        assert blk.chosen_impl(x) == "folded"
    blk.mlp.drop.p = 0.1  # active MLP dropout: the textbook form
    with torch.no_grad():
        assert blk.chosen_impl(x) == "reference"


def test_inference_path_under_bf16_autocast_and_in_the_flop_counter():
    """Under autocast the chunks run the aten kernels in bf16 (close to float32); the FLOP counter runs the
    whole-map form, so the MLP's products are counted."""
    from sofa.models.flops import count_macs

    m = _model("pool")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = m(x)
    torch.testing.assert_close(y16.float(), y, rtol=0.05, atol=0.05)
    macs = count_macs(m, (3, 64, 64))
    mlp = sum(
        b.mlp.fc1.weight.numel() * 2 * (64 // 2 ** (i + 2)) ** 2 for i, s in enumerate(m.stages) for b in s.blocks
    )
    assert macs > mlp


def test_compiled_inference_equals_eager():
    """torch.compile keeps the fused operator as one kernel (the custom op) and fuses the rest: same logits."""
    m = _model("pool")
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        want = m(x)
        got = torch.compile(m)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
