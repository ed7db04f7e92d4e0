"""Released checkpoints: parity with the original code's outputs, conversion, wrappers, and errors that name keys.

The parity test covers every case of ``shared/reference/index.json`` (found through the ``reference_dir`` /
``reference_index`` fixtures; skipped with the reason where absent): each original ``.pth`` is loaded into our
model through ``create_model(checkpoint_path=...)`` and every stored output (logits, SOFT pre-logits, PoolFormer
dense features; every input size) must agree within 1e-5 × max|reference|.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from sofa.checkpoint import CheckpointError, read_checkpoint, save_weights
from sofa.models import create_model

TOL = 1e-5


def model_args(case: dict) -> tuple[str, dict]:
    """The sofa model (and architecture kwargs) for a reference case's original constructor config."""
    cfg = case["config"]
    if case["family"] == "soft":
        name = "soft_norm_tiny" if case.get("variant") == "norm" else "soft_tiny"
        sr = cfg.get("sr_ratios", (8, 4, 2, 1))
        return name, dict(
            embed_dims=tuple(cfg["embed_dims"]),
            num_heads=tuple(cfg["num_heads"]),
            depths=tuple(cfg["depths"]),
            mlp_ratio=cfg["mlp_ratios"][3],
            landmark_strides=tuple(sr[:3]),
            sr_ratio=sr[3],
        )
    if case["family"] == "poolformer":
        assert all(cfg.get("downsamples", [True] * 4)) and len(set(cfg["mlp_ratios"])) == 1
        return "poolformer_s12", dict(
            depths=tuple(cfg["layers"]), dims=tuple(cfg["embed_dims"]), mlp_ratios=cfg["mlp_ratios"][0]
        )
    raise AssertionError(f"unknown family {case['family']}")


def run_case(model, io: dict, dense: bool):
    """{output key: (ours, reference)} for every input stored in the case."""
    pairs = {}
    for key, x in io.items():
        if not key.startswith("input_"):
            continue
        size = key[len("input_") :]
        with torch.no_grad():
            if dense:
                for i, f in enumerate(model(x)):
                    pairs[f"feature{i}_{size}"] = f
            else:
                feats = model.forward_features(x)
                pairs[f"logits_{size}"] = model.forward_head(feats)
                if f"pre_logits_{size}" in io:
                    pairs[f"pre_logits_{size}"] = model.forward_head(feats, pre_logits=True)
    return {k: (v, io[k]) for k, v in pairs.items()}


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_reference_parity_every_case(reference_dir, reference_index):
    checked = []
    for name, case in reference_index.items():
        io = load_file(reference_dir / case["io"])
        sofa_name, kwargs = model_args(case)
        dense = bool(case.get("features"))
        variants = [dict()]
        if case.get("variant") == "norm":  # per-image α (default) and the released batch-wide α
            variants = [dict(batch_alpha=False), dict(batch_alpha=True)]
        for extra in variants:
            model = create_model(
                sofa_name, checkpoint_path=reference_dir / case["checkpoint"], features_only=dense, **kwargs, **extra
            ).eval()
            pairs = run_case(model, io, dense)
            outputs = {k for k in io if not k.startswith("input_")}
            assert set(pairs) == outputs, f"{name}: outputs not reproduced: {outputs - set(pairs)}"
            for key, (ours, ref) in pairs.items():
                assert ours.shape == ref.shape, (name, key)
                err = rel_err(ours, ref)
                assert err <= TOL, f"{name} {extra} {key}: max error {err:.2e} × max|ref|"
                checked.append((name, key))
    assert {n for n, _ in checked} == set(reference_index)


def test_reference_cases_cover_each_family(reference_index):
    fams = {(c["family"], c.get("variant"), bool(c.get("features"))) for c in reference_index.values()}
    assert ("soft", "plain", False) in fams and ("soft", "norm", False) in fams
    assert any(f[0] == "poolformer" and f[2] for f in fams)


def test_parity_needs_the_depthwise_conv(reference_dir, reference_index):
    """The test above is sensitive: leaving out SOFT's depthwise convolution on V breaks parity."""
    case = reference_index["soft_mini"]
    sofa_name, kwargs = model_args(case)
    model = create_model(sofa_name, checkpoint_path=reference_dir / case["checkpoint"], **kwargs).eval()
    for stage in model.stages[:3]:
        for blk in stage.blocks:
            blk.attn.dwconv = None
    io = load_file(reference_dir / case["io"])
    errs = [rel_err(a, b) for a, b in run_case(model, io, False).values()]
    assert max(errs) > 100 * TOL


# ---------------------------------------------------------------------------------------------------- formats
@pytest.fixture(scope="module")
def soft_original(reference_dir):
    return torch.load(reference_dir / "soft_mini.pth", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "wrap", ["bare", "state_dict", "model", "state_dict_ema", "module_prefix", "model_module_prefix"]
)
def test_checkpoint_wrappers(tmp_path, soft_original, wrap):
    sd = dict(soft_original)
    obj = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {}, "epoch": 3},
        "state_dict_ema": {"state_dict_ema": sd},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "model_module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    m = create_model("soft_mini", checkpoint_path=path)
    torch.testing.assert_close(m.stages[0].blocks[0].attn.q.weight, sd["block1.0.att.mha.W_q.weight"], rtol=0, atol=0)
    assert m.num_classes == 10  # taken from the checkpoint when not asked for


class Arbitrary:
    """A class a pickle could construct: weights_only loading must refuse it."""


def test_pickles_with_objects_are_refused_naming_them_without_torchs_advice(tmp_path):
    """A pickle holding objects (a class, an argparse.Namespace) is refused for safety: the message names the
    objects and a safe remedy, and never relays torch's advice to load with weights_only=False."""
    import argparse

    for name, extra in (("class", Arbitrary()), ("namespace", argparse.Namespace(lr=0.1))):
        path = tmp_path / f"{name}.pth"
        torch.save({"state_dict": {"w": torch.zeros(1)}, "args": extra}, path)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        text = str(info.value)
        want = "test_checkpoints.Arbitrary" if name == "class" else "argparse.Namespace"
        assert f"holds objects that are not tensors ({want})" in text and "for safety" in text, text
        assert "weights_only=False" not in text and "will likely succeed" not in text, text


def test_convert_cli_and_safetensors_round_trip(tmp_path, reference_dir):
    from sofa.cli import main

    out = tmp_path / "soft_mini.safetensors"
    assert main(["convert", str(reference_dir / "soft_mini.pth"), str(out), "--model", "soft_mini"]) == 0
    state, meta = read_checkpoint(out)
    assert meta["model"] == "soft_mini" and "stages.0.blocks.0.attn.q.weight" in state
    a = create_model("soft_mini", checkpoint_path=reference_dir / "soft_mini.pth").eval()
    b = create_model("soft_mini", checkpoint_path=out).eval()
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # our own writer, and timm's loader reads the same file
    save_weights(tmp_path / "b.safetensors", b.state_dict())
    import timm

    c = timm.create_model("soft_mini", num_classes=10, checkpoint_path=str(tmp_path / "b.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(c(x), b(x))


def test_convert_cli_reports_errors(tmp_path, reference_dir, capsys):
    from sofa.cli import main

    rc = main(
        ["convert", str(reference_dir / "soft_mini.pth"), str(tmp_path / "x.safetensors"), "--model", "soft_tiny"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "missing keys" in err and "stages.1.blocks.1.attn.q.weight" in err and "wrong shapes" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_dense_poolformer(tmp_path, reference_dir):
    from sofa.cli import main

    out = tmp_path / "pf.safetensors"
    assert (
        main(
            [
                "convert",
                str(reference_dir / "poolformer_mini_features.pth"),
                str(out),
                "--model",
                "poolformer_mini",
                "--features",
            ]
        )
        == 0
    )
    state, _ = read_checkpoint(out)
    assert "out_norms.0.weight" in state and "network.0.0.norm1.weight" not in state
    m = create_model("poolformer_mini", features_only=True, checkpoint_path=out)
    torch.testing.assert_close(m.model.out_norms[2].weight, state["out_norms.2.weight"], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- errors
def _save(tmp_path, sd, name="x.safetensors"):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_missing_key_is_named(tmp_path):
    sd = create_model("poolformer_mini").state_dict()
    del sd["stages.2.blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): stages\.2\.blocks\.1\.mlp\.fc2\.bias"):
        create_model("poolformer_mini", checkpoint_path=_save(tmp_path, sd))


def test_unexpected_key_is_named(tmp_path):
    sd = create_model("poolformer_mini").state_dict()
    sd["stages.0.blocks.0.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): stages\.0\.blocks\.0\.extra"):
        create_model("poolformer_mini", checkpoint_path=_save(tmp_path, sd))


def test_wrong_shape_is_named(tmp_path):
    sd = create_model("poolformer_mini").state_dict()
    sd["stages.1.blocks.0.layer_scale1"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"stages\.1\.blocks\.0\.layer_scale1 checkpoint \(5,\) vs model \(32,\)"):
        create_model("poolformer_mini", checkpoint_path=_save(tmp_path, sd))


def test_original_layout_errors_name_sofa_keys(tmp_path, soft_original):
    sd = dict(soft_original)
    del sd["block2.0.att.mha.attn.conv.weight"]
    path = tmp_path / "o.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): stages\.1\.blocks\.0\.attn\.dwconv\.weight"):
        create_model("soft_mini", checkpoint_path=path)


def test_classifier_of_another_size_dropped_with_warning(reference_dir):
    with pytest.warns(
        UserWarning,
        match=r"a classifier for 10 classes, the model has 4: head\.bias, head\.weight "
        r"re-initialised, the rest loaded",
    ):
        m = create_model("soft_mini", checkpoint_path=reference_dir / "soft_mini.pth", num_classes=4)
    assert m.head.weight.shape == (4, 128)
    ref = torch.load(reference_dir / "soft_mini.pth", weights_only=True)["state_dict"]
    torch.testing.assert_close(m.norm.weight, ref["norm.weight"], rtol=0, atol=0)  # the rest is loaded
    # without num_classes the checkpoint's classifier is kept; with num_classes=0 it is dropped, no error
    assert create_model("soft_mini", checkpoint_path=reference_dir / "soft_mini.pth").num_classes == 10
    with pytest.warns(UserWarning, match="dropped"):
        assert isinstance(
            create_model("soft_mini", checkpoint_path=reference_dir / "soft_mini.pth", num_classes=0).head,
            torch.nn.Identity,
        )


def test_classification_checkpoint_into_dense_backbone_warns_about_fresh_norms(reference_dir):
    with pytest.warns(UserWarning, match=r"left at their initial values: out_norms\.0\.weight"):
        m = create_model("poolformer_mini", checkpoint_path=reference_dir / "poolformer_mini.pth", features_only=True)
    assert len(m(torch.randn(1, 3, 64, 64))) == 4


def test_dense_checkpoint_into_classifier_fails_naming_keys(reference_dir):
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): norm\.weight, norm\.bias(.|\n)*features_only=True"):
        create_model("poolformer_mini", checkpoint_path=reference_dir / "poolformer_mini_features.pth", num_classes=10)


def test_released_20_block_small_loads_into_soft_small(tmp_path):
    """The released code's soft_small (depths 1,3,20,4) is recognised by its stage-3 depth."""
    narrow = dict(embed_dims=(32, 64, 96, 128), num_heads=(1, 2, 3, 4))
    released = create_model("soft_small_released", num_classes=3, **narrow)
    path = tmp_path / "released_small.safetensors"
    save_weights(path, released.state_dict())
    with pytest.warns(UserWarning, match="20-block Small"):
        m = create_model("soft_small", checkpoint_path=path, **narrow)
    assert m.depths == (1, 3, 20, 4)
    assert create_model("soft_small", **narrow).depths == (1, 3, 7, 4)


def test_position_embeddings_resampled_for_another_img_size(reference_dir):
    with pytest.warns(UserWarning, match="resampled from 56x56 to 16x16"):
        m = create_model("soft_mini", checkpoint_path=reference_dir / "soft_mini.pth", img_size=64)
    ref = create_model("soft_mini", checkpoint_path=reference_dir / "soft_mini.pth")
    assert m.stages[0].pos_embed.shape == (1, 256, 32)
    # resampling once at load = resizing on every forward: same outputs
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_timm_port_weights_load_with_the_same_backbone_and_a_warning_about_the_head(tmp_path):
    """A checkpoint of timm's PoolFormer port loads into ours (its LayerScale modules and head-held norm mapped):
    the stage outputs are timm's; its head normalises after pooling, unlike the released PoolFormer, so the
    logits differ and loading says so."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model("poolformer_s12", num_classes=10).eval()
    with torch.no_grad():  # non-trivial LayerScales and norms, so that a wrong mapping shows
        for name, p in theirs.named_parameters():
            if "layer_scale" in name or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    path = tmp_path / "timm_poolformer.pth"
    torch.save(theirs.state_dict(), path)
    with pytest.warns(UserWarning, match="logits are not timm's"):
        ours = create_model("poolformer_s12", num_classes=10, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        want = theirs.forward_features(x)
        got = ours.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
        logits_theirs, logits_ours = theirs(x), ours(x)
    assert rel_err(got, want) < TOL
    # timm's head: pool, then LayerNorm(eps 1e-6) on the pooled vector; ours: GroupNorm on the map, then pool
    assert rel_err(logits_ours, logits_theirs) > 1e-3
    pooled_norm = torch.nn.functional.layer_norm(got.mean((-2, -1)), (512,), ours.norm.weight, ours.norm.bias, 1e-6)
    assert rel_err(ours.head(pooled_norm), logits_theirs) < TOL


# ---------------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    """Checkpoints, converted weights and JSON get the permissions of any new file, as log.txt does."""
    from sofa.checkpoint import atomic_torch_save, atomic_write_text

    old = os.umask(umask)
    try:
        paths = [
            save_weights(tmp_path / "w.safetensors", {"a": torch.zeros(2)}, {"model": "x"}),
            atomic_write_text(tmp_path / "e.json", "{}"),
            atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "last.pt"),
        ]
        with open(tmp_path / "log.txt", "w") as f:  # what a plain open() gives, for comparison
            f.write("")
    finally:
        os.umask(old)
    assert (tmp_path / "log.txt").stat().st_mode & 0o777 == mode
    for p in paths:
        assert p.stat().st_mode & 0o777 == mode, (p.name, oct(p.stat().st_mode))


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_propagates_unchanged_and_leaves_the_old_file(tmp_path, monkeypatch, where):
    import errno

    from sofa import checkpoint as ckpt

    target = tmp_path / "model.safetensors"
    save_weights(target, {"a": torch.ones(3)}, {"epoch": 1})
    before = target.read_bytes()
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fail(*_):
        raise full

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
        with pytest.raises(OSError) as info:
            save_weights(target, {"a": torch.zeros(3)}, {"epoch": 2})
    else:
        with pytest.raises(OSError) as info:
            ckpt.atomic_write(target, fail)
    assert info.value is full and info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left
    assert target.read_bytes() == before


def test_reader_returns_one_metadata_dict_for_every_sofa_format(tmp_path):
    """The same metadata whichever writer made the file: today's save_weights, an older sofa convert
    (``sofa="1"`` + keys JSON-encoded one by one), a training state; foreign safetensors: empty."""
    from safetensors.torch import save_file

    from sofa.checkpoint import STATE_FORMAT

    state = {"head.weight": torch.zeros(3, 2)}
    meta = {"model": "poolformer_mini", "num_classes": 3, "depths": [1, 1, 3, 1]}
    save_weights(tmp_path / "new.safetensors", state, meta)
    save_file(
        state,
        str(tmp_path / "old.safetensors"),
        metadata={
            "format": "pt",
            "sofa": "1",
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
        },
    )
    save_file(state, str(tmp_path / "timm.safetensors"), metadata={"format": "pt"})
    torch.save(
        {"format": STATE_FORMAT, "model": state, "metadata": meta, "config": {"lr": 0.1}, "epoch": 4},
        tmp_path / "last.pt",
    )
    assert read_checkpoint(tmp_path / "new.safetensors")[1] == meta
    assert read_checkpoint(tmp_path / "old.safetensors")[1] == meta
    assert read_checkpoint(tmp_path / "timm.safetensors")[1] == {}
    sd, got = read_checkpoint(tmp_path / "last.pt")
    assert got == dict(meta, config={"lr": 0.1}, epoch=4) and torch.equal(sd["head.weight"], state["head.weight"])
    # a run directory: best, else final, else the training state; or the weights asked for
    assert read_checkpoint(tmp_path)[1] == got
    (tmp_path / "new.safetensors").rename(tmp_path / "model.safetensors")
    assert read_checkpoint(tmp_path)[1] == meta and read_checkpoint(tmp_path, "final")[1] == meta
    with pytest.raises(CheckpointError, match="has no best weights"):
        read_checkpoint(tmp_path, "best")
