"""SOFT beyond the fixtures: our model against a slow, literal float64 transcription of docs/methods/soft.md.

The fixtures in shared/reference cover one small configuration (one block per stage) at two input sizes. Here
a second, independent implementation — written directly from the arithmetic of docs/methods/soft.md on the
*released* state-dict layout, in float64, with plain functional ops and the released association
(K1·A⁺)·(K1ᵀ·V) — checks our model (loaded through the checkpoint converter) for several blocks per stage,
several heads, SOFT and SOFT-Norm, and input sizes the fixtures do not have (odd, non-square, not multiples of
32). The literal version is itself checked against the fixtures first, so that it is known to be the released
arithmetic.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sofa.models import create_model
from sofa.models.soft import MIXER_KEYS

# ---------------------------------------------------------------------------------------------------- literal SOFT


def _cbr(x, sd, pre, stride):
    x = F.conv2d(x, sd[pre + ".0.weight"], sd[pre + ".0.bias"], stride, 1)
    x = F.batch_norm(
        x,
        sd[pre + ".1.running_mean"],
        sd[pre + ".1.running_var"],
        sd[pre + ".1.weight"],
        sd[pre + ".1.bias"],
        False,
        0.0,
        1e-5,
    )
    return x.relu()


def _resize_grid(pos, base, hw):
    g = pos.reshape(1, base[0], base[1], -1).permute(0, 3, 1, 2)
    return F.interpolate(g, size=hw, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


def _sqdist(a, b):
    return (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) - 2 * a @ b.transpose(-1, -2)


def _newton(A, normalized, iters=20):
    I = torch.eye(A.shape[-1], dtype=A.dtype)  # noqa: E741 (the identity, as in the formulas)
    if not normalized:  # plain: shift, α per image and head from the row sums of A
        alpha = 0.9 * 2 / A.sum(-1).amax(-1) ** 2
        P = A + 0.01 * I
        V = alpha[..., None, None] * P
    else:  # SOFT-Norm, as released: α over the whole batch, halved while the start is too large
        P = A
        alpha = 2 / A.sum(-1).max() ** 2
        V = alpha * P
        tries = 0
        while (I - P @ V).abs().sum(-2).max() > 1.01 and tries < 10:
            alpha = alpha / 2
            V = alpha * P
            tries += 1
    for _ in range(iters):
        V = 2 * V - V @ P @ V
    return V


def _ln(x, sd, pre, eps):
    return F.layer_norm(x, x.shape[-1:], sd[pre + ".weight"], sd[pre + ".bias"], eps)


def _soft_block(t, sd, pre, heads, hw, r, k, normalized):
    B, N, C = t.shape
    H, W = hw
    d = C // heads
    q = (t @ sd[pre + "att.mha.W_q.weight"].T + sd[pre + "att.mha.W_q.bias"]).reshape(B, N, heads, d).transpose(1, 2)
    v = (t @ sd[pre + "att.mha.W_v.weight"].T + sd[pre + "att.mha.W_v.bias"]).reshape(B, N, heads, d).transpose(1, 2)
    q = q / math.sqrt(math.sqrt(d))
    img = q.reshape(B * heads, H, W, d).permute(0, 3, 1, 2)
    L = F.conv2d(img, sd[pre + "att.mha.attn.Qlandmark_op.weight"], stride=r)
    L = L.flatten(2).transpose(1, 2).reshape(B, heads, -1, d)
    L = F.gelu(_ln(L, sd, pre + "att.mha.attn.Qnorm_act.0", 1e-5))
    K1 = torch.exp(-_sqdist(q, L) / 2)
    A = torch.exp(-_sqdist(L, L) / 2)
    A_inv = _newton(A, normalized)
    if normalized:
        D = 1 / A.sum(-1, keepdim=True).sqrt()
        A_inv = D * A_inv * D.transpose(-1, -2)
    X = (K1 @ A_inv) @ (K1.transpose(-1, -2) @ v)
    vi = v.reshape(B, heads, H, W, d).permute(0, 4, 1, 2, 3).reshape(B * d, heads, H, W)
    conv = F.conv2d(vi, sd[pre + "att.mha.attn.conv.weight"], padding=k // 2, groups=heads)
    X = X + conv.reshape(B, d, heads, H, W).flatten(3).permute(0, 2, 3, 1)
    out = X.transpose(1, 2).reshape(B, N, C) @ sd[pre + "att.mha.ff.weight"].T + sd[pre + "att.mha.ff.bias"]
    t = _ln(t + out, sd, pre + "att.norm1", 1e-5)
    h = t @ sd[pre + "att.ff1.weight"].T + sd[pre + "att.ff1.bias"]
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    h = h @ sd[pre + "att.ff2.weight"].T + sd[pre + "att.ff2.bias"]
    return _ln(t + h, sd, pre + "att.norm2", 1e-5)


def _vit_block(t, sd, pre, heads):
    B, N, C = t.shape
    d = C // heads
    y = _ln(t, sd, pre + "norm1", 1e-6)
    q = (y @ sd[pre + "attn.q.weight"].T + sd[pre + "attn.q.bias"]).reshape(B, N, heads, d).transpose(1, 2)
    kv = (y @ sd[pre + "attn.kv.weight"].T + sd[pre + "attn.kv.bias"]).reshape(B, N, 2, heads, d).permute(2, 0, 3, 1, 4)
    attn = (q @ kv[0].transpose(-1, -2) * d**-0.5).softmax(-1)
    o = (attn @ kv[1]).transpose(1, 2).reshape(B, N, C) @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
    t = t + o
    y = _ln(t, sd, pre + "norm2", 1e-6)
    h = F.gelu(y @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
    return t + h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]


def literal_soft(sd, cfg, x, normalized):
    """Released SOFT / SOFT-Norm forward, from docs/methods/soft.md, on a released-layout state dict →
    (logits, pre-logits)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    B = x.shape[0]
    x = F.conv2d(x, sd["patch_embed1.proj.0.weight"], sd["patch_embed1.proj.0.bias"], 2, 1)
    x = F.batch_norm(
        x,
        sd["patch_embed1.proj.1.running_mean"],
        sd["patch_embed1.proj.1.running_var"],
        sd["patch_embed1.proj.1.weight"],
        sd["patch_embed1.proj.1.bias"],
        False,
        0.0,
        1e-5,
    ).relu()
    for i, stride in ((3, 1), (6, 2)):
        x = F.conv2d(x, sd[f"patch_embed1.proj.{i}.weight"], sd[f"patch_embed1.proj.{i}.bias"], stride, 1)
        x = F.batch_norm(
            x,
            sd[f"patch_embed1.proj.{i + 1}.running_mean"],
            sd[f"patch_embed1.proj.{i + 1}.running_var"],
            sd[f"patch_embed1.proj.{i + 1}.weight"],
            sd[f"patch_embed1.proj.{i + 1}.bias"],
            False,
            0.0,
            1e-5,
        ).relu()
    sr, conv_k = cfg["sr_ratios"], (9, 5, 3)
    t = None
    for s in range(1, 5):
        if s > 1:
            x = _cbr(x, sd, f"patch_embed{s}.proj", 2)
        _, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        base = 56 >> (s - 1)
        pos = sd[f"pos_embed{s}"]
        if s < 4:
            t = t + _resize_grid(pos, (base, base), (H, W))
            for j in range(cfg["depths"][s - 1]):
                t = _soft_block(
                    t, sd, f"block{s}.{j}.", cfg["num_heads"][s - 1], (H, W), sr[s - 1], conv_k[s - 1], normalized
                )
            x = t.transpose(1, 2).reshape(B, C, H, W)
        else:
            t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1)
            t = t + torch.cat([pos[:, :1], _resize_grid(pos[:, 1:], (base, base), (H, W))], 1)
            for j in range(cfg["depths"][3]):
                t = _vit_block(t, sd, f"block4.{j}.", cfg["num_heads"][3])
    pre = _ln(t, sd, "norm", 1e-6)[:, 0]
    return pre @ sd["head.weight"].T + sd["head.bias"], pre


def to_original(sd):
    """sofa's SOFT keys → the released layout (the inverse of soft.checkpoint_filter_fn)."""
    inv = {v: k for k, v in MIXER_KEYS.items()}
    out = {}
    for k, v in sd.items():
        nk = k
        if k.startswith("stem."):
            nk = "patch_embed1.proj." + k[5:]
        elif m := re.match(r"stages\.(\d)\.downsample\.(.*)", k):
            nk = f"patch_embed{int(m.group(1)) + 1}.proj.{m.group(2)}"
        elif m := re.match(r"stages\.(\d)\.pos_embed$", k):
            nk = f"pos_embed{int(m.group(1)) + 1}"
        elif m := re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.*)", k):
            s, j, rest = int(m.group(1)), m.group(2), m.group(3)
            if s < 3:
                for a, b in inv.items():
                    if rest.startswith(a):
                        rest = b + rest[len(a) :]
                        break
            nk = f"block{s + 1}.{j}.{rest}"
        out[nk] = v
    return out


# ---------------------------------------------------------------------------------------------------- tests
def test_literal_transcription_reproduces_the_fixtures(reference_dir, reference_index):
    """The literal version is the released arithmetic: it reproduces the original code's outputs."""
    for name, case in reference_index.items():
        if case["family"] != "soft":
            continue
        sd = torch.load(reference_dir / case["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        io = load_file(reference_dir / case["io"])
        for key, x in io.items():
            if key.startswith("input_"):
                size = key[len("input_") :]
                logits, pre = literal_soft(sd, case["config"], x, case["variant"] == "norm")
                for out, ref in ((logits, io[f"logits_{size}"]), (pre, io[f"pre_logits_{size}"])):
                    assert (out.float() - ref).abs().max() <= 1e-5 * ref.abs().max(), (name, size)


def _randomise(model, seed):
    """Weights far from init (so that every branch matters), BatchNorm statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.dtype != torch.float32:
                continue
            if name.endswith(
                ("running_var", "norm.weight", "norm1.weight", "norm2.weight", "landmark_norm.weight")
            ) or re.search(r"\.1\.weight$|stem\.(4|7)\.weight$", name):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(
                    torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(1, p[0].numel())) if p.dim() > 1 else 0.1)
                )


CONFIGS = {
    # two blocks in the SOFT stages and several heads: what the fixtures (one block per stage) do not cover
    "plain": dict(name="soft_tiny", embed_dims=(32, 64, 96, 128), num_heads=(1, 2, 3, 4), depths=(2, 2, 2, 1)),
    "norm": dict(name="soft_norm_tiny", embed_dims=(32, 64, 96, 128), num_heads=(1, 2, 3, 4), depths=(1, 2, 2, 2)),
}


@pytest.mark.parametrize("variant", ["plain", "norm"])
@pytest.mark.parametrize("hw", [(97, 65), (128, 160)])
def test_model_matches_literal_soft_beyond_the_fixtures(tmp_path, variant, hw):
    cfg = dict(CONFIGS[variant])
    name = cfg.pop("name")
    model = create_model(name, num_classes=5, **cfg)
    _randomise(model, seed=hw[0] + (variant == "norm"))
    path = tmp_path / "orig.pth"
    torch.save({"state_dict": to_original(model.state_dict())}, path)  # a checkpoint in the released layout
    kwargs = dict(batch_alpha=True) if variant == "norm" else {}
    ours = create_model(name, checkpoint_path=path, **cfg, **kwargs).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = ours.forward_features(x)
        logits, pre = ours.forward_head(feats), ours.forward_head(feats, pre_logits=True)
    ref_cfg = dict(depths=cfg["depths"], num_heads=cfg["num_heads"], sr_ratios=(8, 4, 2, 1))
    ref_logits, ref_pre = literal_soft(to_original(model.state_dict()), ref_cfg, x, variant == "norm")
    for out, ref in ((logits, ref_logits), (pre, ref_pre)):
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        assert err <= 1e-5, f"{variant} {hw}: {err:.2e}"
    if hw == (128, 160):  # the comparison is sensitive: 19 Newton iterations, or per-image α, are detected
        wrong = [dict(newton_iters=19)] + ([dict(batch_alpha=False)] if variant == "norm" else [])
        for extra in wrong:
            other = create_model(name, checkpoint_path=path, **cfg, **{**kwargs, **extra}).eval()
            with torch.no_grad():
                err = ((other(x).double() - ref_logits).abs().max() / ref_logits.abs().max()).item()
            assert err > 1e-5, extra
