"""The model zoo: every registered model builds and runs, at any input size, in timm's conventions.

Models are kept small here (one block per stage, small inputs) so that the file runs in well under a minute on
two cores; full-size construction happens on the meta device (parameter counts) or in tests marked slow.
"""

from __future__ import annotations

import math

import pytest
import torch

import sofa
from sofa.models import create_model, get_entry, list_models
from sofa.models.flops import count_macs, count_params

#: the image models (the LRA sequence classifiers, family "lra", are tested in test_lra_models.py)
ALL = [n for n in list_models() if get_entry(n).family not in ("lra", "text")]
SMALL = (
    "soft_mini",
    "soft_norm_mini",
    "poolformer_mini",
    "setformer_mini",
    "poolformer_s12_attn",
    "poolformer_s12_soft",
    "poolformer_s12_set",
    "poolformer_s12_identity",
)


def small(name: str, narrow: bool = False, **kwargs):
    """``name`` with one block per stage (its mixers kept; its widths too unless ``narrow``)."""
    kwargs.setdefault("depths", (1, 1, 1, 1))
    kwargs.setdefault("num_classes", 7)
    if narrow and get_entry(name).family != "soft":
        kwargs.setdefault("dims", (32, 64, 96, 128))
    return create_model(name, **kwargs)


def test_registry_has_every_variant():
    expected = {f"soft_{v}" for v in ("tiny", "small", "medium", "large", "huge", "mini")}
    expected |= {f"soft_norm_{v}" for v in ("tiny", "small", "medium", "large", "huge", "mini")}
    expected |= {f"setformer_{v}" for v in ("mini", "tiny", "small", "base")}
    expected |= {f"poolformer_{v}" for v in ("s12", "s24", "s36", "m36", "m48", "mini")}
    expected |= {
        "poolformer_s12_identity",
        "poolformer_s12_attn",
        "poolformer_s12_soft",
        "poolformer_s12_set",
        "soft_small_released",
        "soft_norm_small_released",
    }
    assert expected == set(ALL)
    assert sofa.list_models is list_models and sofa.create_model is create_model
    assert set(list_models("soft_norm_*")) == {n for n in ALL if n.startswith("soft_norm_")}
    assert all(get_entry(n).family == "poolformer" for n in list_models(family="poolformer"))


def test_unknown_name_says_what_exists():
    with pytest.raises(ValueError, match="unknown model 'soft_tinyy'.*soft_tiny"):
        create_model("soft_tinyy")


def test_pretrained_without_file_refuses():
    with pytest.raises(ValueError, match="downloads no weights"):
        create_model("soft_mini", pretrained=True)
    with pytest.raises(ValueError, match="downloads no weights"):  # the entry function itself, as timm's are
        sofa.models.soft.soft_mini(pretrained=True)


def test_every_model_is_an_entry_function_of_its_name():
    """``def soft_tiny(pretrained=False, **kwargs)`` in its family's module, as timm declares models: a plain
    search for the name finds where the variant is defined."""
    import inspect
    import sys

    for name in ALL:
        fn = get_entry(name).fn
        module = sys.modules[fn.__module__]
        assert fn.__name__ == name and getattr(module, name) is fn, name
        assert f"def {name}(pretrained: bool = False, **kwargs)" in inspect.getsource(module), name


@pytest.mark.parametrize("name", ALL)
def test_every_model_forward_and_backward(name):
    """Every registered model (one block per stage) maps a non-square, not-multiple-of-32 batch to logits, and
    every parameter but the unused gets a finite gradient."""
    model = small(name)
    x = torch.randn(2, 3, 45, 61)
    y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_every_full_size_model_forward(name):
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 96, 80))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("hw", [(3, 3), (37, 83)])
def test_any_input_size(name, hw):
    """Tiny, odd and non-square inputs work; outputs depend on the input (not a constant)."""
    model = small(name, narrow=True).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])


def test_too_small_input_is_refused_with_a_message():
    model = small("poolformer_mini").eval()
    with pytest.raises(ValueError, match=r"1x2 is too small; it needs at least 3x3"):
        model(torch.randn(1, 3, 1, 2))
    with pytest.raises(ValueError, match=r"expected images \(B, C, H, W\)"):
        small("soft_mini")(torch.randn(3, 32, 32))


def test_soft_at_32px_has_one_landmark_per_stage_and_trains():
    """The training engineer's case: soft_mini at 32×32 (stage 4 at 1×1, every landmark grid one cell)."""
    model = create_model("soft_mini", num_classes=10)
    assert [s.blocks[0].attn.num_landmarks((32 // 4 >> i, 32 // 4 >> i)) for i, s in enumerate(model.stages[:3])] == [
        1,
        1,
        1,
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name",
    [
        "soft_mini",
        "soft_norm_mini",
        "poolformer_s12_soft",
        "poolformer_s12_set",
        "poolformer_s12_attn",
        "setformer_mini",
    ],
)
def test_cpu_autocast(name, dtype):
    model = small(name, narrow=True).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=dtype):
            y = model(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SMALL)
def test_gpu(name, dtype):
    model = small(name, narrow=True).eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        ref = model(x)
        model = model.cuda()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = model(x.cuda())
    assert torch.isfinite(y).all()
    tol = 1e-3 if dtype == torch.float32 else 0.1
    assert (y.float().cpu() - ref).abs().max() <= tol * ref.abs().max() + tol


# ---------------------------------------------------------------------------------------------------- timm
def test_timm_registry_mirror_never_overwrites_timm():
    import timm

    for name in ALL:
        tname = sofa.models.timm_name(name)
        assert timm.is_model(tname)
        assert tname == name or tname == "sofa_" + name
    # timm's own PoolFormer port keeps its names; ours are prefixed
    assert sofa.models.timm_name("poolformer_s12") == "sofa_poolformer_s12"
    assert timm.models.model_entrypoint("poolformer_s12").__module__.startswith("timm.")
    assert sofa.models.timm_name("soft_tiny") == "soft_tiny"
    m = timm.create_model("poolformer_mini", num_classes=3)  # a name timm does not own: unprefixed
    assert type(m).__name__ == "PoolFormer" and m.num_classes == 3
    assert type(timm.create_model("poolformer_s12", pretrained=False)).__module__.startswith("timm.")
    # sofa's name lookup accepts the prefixed name too
    assert type(create_model("sofa_poolformer_mini")).__name__ == "PoolFormer"


def test_timm_round_trip_same_outputs():
    import timm

    torch.manual_seed(1)
    a = timm.create_model("soft_mini", num_classes=4).eval()
    b = create_model("soft_mini", num_classes=4).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    cfg = timm.data.resolve_data_config({}, model=a)
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"


@pytest.mark.parametrize("name", ["soft_tiny", "poolformer_s12", "poolformer_m36", "setformer_tiny"])
def test_pretrained_cfg(name):
    with torch.device("meta"):
        m = create_model(name)
    cfg = m.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["classifier"] == "head" and isinstance(m.get_classifier(), torch.nn.Linear)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == {"poolformer_s12": 0.9, "poolformer_m36": 0.95}.get(name, 0.875)
    first = dict(m.named_modules())[cfg["first_conv"]]
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == 3


def test_img_size_sets_input_size_and_position_grids():
    m = create_model("soft_mini", img_size=64)
    assert m.pretrained_cfg["input_size"] == (3, 64, 64)
    assert [tuple(s.grid) for s in m.stages] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert m.stages[3].pos_embed.shape == (1, 2 * 2 + 1, 128)


@pytest.mark.parametrize("name", SMALL[:4])
def test_timm_conventions(name):
    model = small(name, narrow=True)
    x = torch.randn(2, 3, 40, 56)
    model.eval()
    with torch.no_grad():
        full = model(x)
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), full)
        pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert all(n in names for n in nwd)
    if name.startswith("soft"):
        assert "cls_token" in nwd and "stages.0.pos_embed" in nwd


@pytest.mark.parametrize("name", ["soft_mini", "poolformer_mini", "setformer_mini", "poolformer_s12_attn"])
def test_grad_checkpointing_same_result(name):
    torch.manual_seed(0)
    model = small(name, narrow=True, depths=(1, 2, 1, 1)).eval()
    x = torch.randn(2, 3, 40, 40)
    y0 = model(x)
    g0 = torch.autograd.grad(y0.sum(), model.stem.parameters().__next__())[0]
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    y1 = model(x)
    g1 = torch.autograd.grad(y1.sum(), model.stem.parameters().__next__())[0]
    torch.testing.assert_close(y0, y1)
    torch.testing.assert_close(g0, g1)


# ---------------------------------------------------------------------------------------------------- features
@pytest.mark.parametrize(
    "name", ["soft_mini", "soft_norm_mini", "poolformer_mini", "setformer_mini", "poolformer_s12_soft"]
)
def test_features_only_shapes_and_reductions(name):
    m = small(name, narrow=True, features_only=True).eval()
    assert m.feature_info.reduction() == [4, 8, 16, 32]
    H, W = 75, 99  # odd and non-square
    with torch.no_grad():
        feats = m(torch.randn(2, 3, H, W))
    assert len(feats) == 4
    assert [f.shape[1] for f in feats] == m.feature_info.channels()
    if name.startswith("poolformer"):  # 7×7 stride-4 pad-2 stem, then 3×3 stride-2 pad-1
        h, w = (H - 3) // 4 + 1, (W - 3) // 4 + 1
    else:  # stride-2 convolutions with padding 1
        h, w = math.ceil(H / 4), math.ceil(W / 4)
    for i, f in enumerate(feats):
        assert f.shape[-2:] == (h, w), (i, f.shape)
        h, w = (h + 1) // 2, (w + 1) // 2
    assert "num_classes" not in m.pretrained_cfg


def test_features_only_out_indices_and_timm():
    import timm

    m = timm.create_model("soft_mini", features_only=True, out_indices=(1, 3))
    assert m.feature_info.reduction() == [8, 32] and m.feature_info.channels() == [64, 128]
    feats = m(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128]
    # stages past the last index are pruned, the head and final norm too
    m2 = create_model("poolformer_mini", features_only=True, out_indices=(0, 1))
    assert len(m2.model.stages) == 2 and isinstance(m2.model.head, torch.nn.Identity)


def test_poolformer_dense_mode_has_output_norms():
    m = create_model("poolformer_mini", features_only=True)
    norms = m.model.out_norms
    assert [type(n).__name__ for n in norms] == ["GroupNorm1"] * 4
    # applied: a feature map is normalised over (C, H, W) (GroupNorm init: weight 1, bias 0)
    feats = m(torch.randn(2, 3, 64, 64))
    f = feats[1].flatten(1)
    torch.testing.assert_close(f.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(f.std(1, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    # RetinaNet's variant: no norm on the first output
    r = create_model("poolformer_mini", features_only=True, out_norms=(False, True, True, True))
    assert isinstance(r.model.out_norms[0], torch.nn.Identity)
    # the classifier has none
    assert create_model("poolformer_mini").out_norms is None


def test_torchvision_fpn_takes_the_features():
    from collections import OrderedDict

    from torchvision.ops import FeaturePyramidNetwork

    backbone = small("soft_norm_mini", features_only=True)
    fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), 32)
    feats = backbone(torch.randn(1, 3, 70, 90))
    out = fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
    assert [o.shape[1] for o in out.values()] == [32] * 4


@pytest.mark.parametrize("name", ["tu-soft_mini", "tu-poolformer_mini"])
def test_smp_tu_encoder(name):
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet(name, encoder_weights=None, classes=3, encoder_depth=5, decoder_channels=(32, 16, 16, 8, 8)).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 3, 64, 96) and torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------------- sizes
PAPER_PARAMS = [n for n in ALL if get_entry(n).paper.get("params") and get_entry(n).family != "setformer"]


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_params_within_2_percent_of_paper(name):
    with torch.device("meta"):
        m = create_model(name)
    p = count_params(m) / 1e6
    paper = get_entry(name).paper["params"]
    assert abs(p - paper) <= 0.02 * paper, (p, paper)


@pytest.mark.parametrize("name", list_models("setformer_*"))
def test_setformer_sizes_within_10_percent_of_targets(name):
    """Parameters on the meta device; MACs measured at 224² (slow part: only the smallest by default)."""
    with torch.device("meta"):
        m = create_model(name)
    target = get_entry(name).paper
    assert abs(count_params(m) / 1e6 - target["params"]) <= 0.1 * target["params"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("setformer_*"))
def test_setformer_macs_within_10_percent_of_targets(name):
    m = create_model(name)
    target = get_entry(name).paper["macs"]
    assert abs(count_macs(m) / 1e9 - target) <= 0.1 * target


def test_pooling_a_map_equals_pooling_its_tokens():
    from sofa.mixers import Pooling

    x = torch.randn(2, 5, 7, 9)
    tokens = Pooling(3)(x.flatten(2).transpose(1, 2), hw=(7, 9))
    torch.testing.assert_close(Pooling(3)(x), tokens.transpose(1, 2).reshape(2, 5, 7, 9))


@pytest.mark.parametrize("mixer", ["pool", "identity"])
def test_folded_poolformer_block_equals_the_textbook_form(mixer):
    """The folded form (GroupNorm affines and LayerScales folded) = the released block, forward and grads."""
    from sofa.models.metaformer import MetaFormerBlock

    torch.manual_seed(0)
    blk = MetaFormerBlock(16, mixer, layer_scale_init_value=0.5)
    with torch.no_grad():  # non-trivial affines and scales
        for p in (
            blk.norm1.weight,
            blk.norm1.bias,
            blk.norm2.weight,
            blk.norm2.bias,
            blk.layer_scale1,
            blk.layer_scale2,
        ):
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    outs, grads = [], []
    for impl in ("auto", "reference"):
        blk.impl = impl
        assert blk.chosen_impl(x) == ("folded" if impl == "auto" else "reference")
        y = blk(x)
        g = torch.autograd.grad(y.square().sum(), [x] + list(blk.parameters()))
        outs.append(y)
        grads.append(g)  # (pooling cancels β1: its gradient is 0 in both forms, not None)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_channels_last_runs_change_only_the_strides():
    """On the CPU the stages run channels-last (1×1 convs as oneDNN GEMMs, no reorders): same logits and stage
    maps as the input's own layout."""
    from sofa import switches

    torch.manual_seed(0)
    m = small("poolformer_s12_set").eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = m.forward_intermediates(x, intermediates_only=True)
        y = m(x)
        with switches.CPU_CHANNELS_LAST.override(False):
            feats_ref = m.forward_intermediates(x, intermediates_only=True)
            y_ref = m(x)
    assert switches.CPU_CHANNELS_LAST.get() and feats[0].is_contiguous(memory_format=torch.channels_last)
    assert feats_ref[0].is_contiguous()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(feats, feats_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_hybrid_mixers_are_the_named_ones():
    from sofa.mixers import SeTAttention, SoftAttention, SoftmaxAttention

    kinds = {"attn": SoftmaxAttention, "soft": SoftAttention, "set": SeTAttention}
    for key, cls in kinds.items():
        m = small(f"poolformer_s12_{key}")
        mixers = [type(s.blocks[0].token_mixer) for s in m.stages]
        assert mixers[2:] == [cls, cls] and mixers[0].__name__ == "Pooling"
    assert small("poolformer_s12_attn").stages[2].pos_embed is not None
    assert [type(s.blocks[0].token_mixer).__name__ for s in small("poolformer_s12_identity").stages] == ["Identity"] * 4
    m = small("poolformer_s12", token_mixers=("pool", "set", "soft_norm", {"kind": "attn", "num_heads": 4}))
    assert [type(s.blocks[0].token_mixer).__name__ for s in m.stages] == [
        "Pooling",
        "SeTAttention",
        "SoftAttention",
        "SoftmaxAttention",
    ]


def test_soft_options_reach_the_mixers():
    m = small("soft_norm_mini", batch_alpha=True, max_landmarks=4, newton_iters=7)
    att = m.stages[0].blocks[0].attn
    assert att.normalized and att.batch_alpha and att.max_landmarks == 4 and att.newton_iters == 7
    assert att.num_landmarks((56, 56)) <= 4
    with pytest.raises(ValueError, match="SOFT-Norm only"):
        small("soft_mini", batch_alpha=True)


# ---------------------------------------------------------------------------------------------------- MACs
def _soft_stage_macs(N, C, h, d, m, iters, H, W, r, k):
    """Hand count of one SoftAttention forward (batch 1): projections, landmark conv, kernels, Newton, products."""
    macs = 2 * N * C * h * d  # q and v
    macs += m * d * d * r * r * h  # landmark conv on each head's d-channel image
    macs += h * (N * m * d + m * m * d)  # Q·Lᵀ and L·Lᵀ of the kernels (the counter runs the one-pass form)
    macs += h * iters * 2 * m**3  # Newton: V·P·V each iteration
    macs += h * (m * N * d + m * m * d + N * m * d)  # K1ᵀV, A⁺(K1ᵀV), K1(...)
    macs += N * h * d * k * k  # depthwise conv on V
    macs += N * h * d * C  # output projection
    return macs


def test_mac_counter_sees_every_newton_iteration():
    from sofa.mixers import SoftAttention

    H, W, C, h = 16, 16, 64, 2
    x = torch.randn(1, H * W, C)
    counts = {}
    for iters in (5, 20):
        att = SoftAttention(C, h, landmark_stride=4, dwconv_kernel=3, newton_iters=iters)
        from sofa.models.flops import flop_counter

        with torch.no_grad(), flop_counter() as fc:
            att(x, hw=(H, W))
        counts[iters] = fc.get_total_flops() // 2
    m = (H // 4) * (W // 4)
    assert counts[20] - counts[5] == h * 15 * 2 * m**3, counts
    # and the whole mixer matches the hand count, term by term
    assert counts[20] == _soft_stage_macs(H * W, C, h, 32, m, 20, H, W, 4, 3), counts


def test_mac_counter_sees_fused_attention():
    from sofa.mixers import SoftmaxAttention
    from sofa.models.flops import flop_counter

    N, C, h = 50, 64, 2
    with torch.no_grad(), flop_counter() as fc:
        SoftmaxAttention(C, h)(torch.randn(1, N, C))
    assert fc.get_total_flops() // 2 == 4 * N * C * C + 2 * N * N * C  # q, kv, proj + QKᵀ and AV


@pytest.mark.parametrize("name", ["soft_mini", "soft_norm_mini", "poolformer_s12_soft"])
def test_per_block_mac_count_equals_the_full_count(name):
    from sofa.models.flops import model_macs

    kw = dict(depths=(2, 3, 2, 2))
    if not name.startswith("soft"):
        kw["dims"] = (32, 64, 96, 128)
    torch.manual_seed(0)
    full = model_macs(name, 64, per_block=False, **kw)
    fast = model_macs(name, 64, per_block=True, **kw)
    # SOFT-Norm's α search (and SeT's iterative parts) may run a data-dependent number of products
    if name in ("soft_mini", "poolformer_s12_soft"):
        assert fast == full
    else:
        assert abs(fast - full) < 0.01 * full


def test_count_macs_of_a_model_is_per_image_and_close_to_paper():
    m = small("poolformer_mini")
    assert count_macs(m, 64, batch=2) == count_macs(m, 64, batch=1)
    assert count_macs(m, 128) > 3.5 * count_macs(m, 64)
    s12 = create_model("poolformer_s12")
    assert abs(count_macs(s12) / 1e9 - 1.8) < 0.05 * 1.8


# ---------------------------------------------------------------------------------------------------- CLI
def _markdown_rows(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0]: dict(zip(cells[0], row, strict=False)) for row in cells[1:]}


def test_cli_models_lists_every_model_without_counting_macs(capsys, monkeypatch):
    """The plain listing builds each model on the meta device only: no MAC counter, no forward pass, no real
    weights; parameters and the papers' numbers for every registered model."""
    import sofa.models.flops as flops
    from sofa.cli import main

    def refuse(*a, **k):
        raise AssertionError("sofa models counted MACs without --macs")

    for name in ("model_macs", "count_macs", "flop_counter"):
        monkeypatch.setattr(flops, name, refuse)
    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)  # no forward pass of any model
    assert main(["models", "--markdown"]) == 0
    rows = _markdown_rows(capsys.readouterr().out)
    assert sorted(rows) == sorted(list_models())  # every registered model, the LRA ones too
    assert "GMACs" not in rows["soft_mini"] and rows["poolformer_s12"]["paper GMACs"] == "1.8"
    assert rows["poolformer_s12"]["params (M)"] == "11.92" and rows["poolformer_s12"]["paper top-1"] == "77.2"


@pytest.mark.parametrize("name", SMALL)
def test_create_on_meta_has_the_real_models_parameters(name):
    """Skipping initialisation on the meta device leaves every parameter and buffer's shape and dtype."""
    from sofa.models.flops import create_on_meta

    meta, real = create_on_meta(name).state_dict(), create_model(name).state_dict()
    assert all(t.is_meta for t in meta.values())
    assert {k: (t.shape, t.dtype) for k, t in meta.items()} == {k: (t.shape, t.dtype) for k, t in real.items()}


def test_cli_models_table_with_macs(capsys):
    from sofa.cli import main

    assert main(["models", "soft_*mini", "--markdown", "--macs"]) == 0
    rows = _markdown_rows(capsys.readouterr().out)
    assert set(rows) == {"soft_mini", "soft_norm_mini"}
    assert float(rows["soft_mini"]["params (M)"]) == pytest.approx(
        count_params(create_model("soft_mini")) / 1e6, abs=0.01
    )
    assert float(rows["soft_mini"]["GMACs"]) == pytest.approx(count_macs(create_model("soft_mini")) / 1e9, abs=0.01)
    assert main(["models", "soft_mini", "--markdown", "--img-size", "128"]) == 0  # a size implies --macs
    rows = _markdown_rows(capsys.readouterr().out)
    assert rows["soft_mini"]["GMACs@128"] == f"{count_macs(create_model('soft_mini'), 128) / 1e9:.2f}"
    assert main(["models", "nothing_matches_*"]) == 1


def test_cli_models_table_lists_paper_numbers(capsys):
    from sofa.cli import main

    assert main(["models", "poolformer_s12", "--no-macs"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("poolformer_s12 ")][0].split()
    assert row[2] == "11.92" and row[3] == "11.9" and "77.2" in row
