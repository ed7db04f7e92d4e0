"""The LRA classifiers (sofa.models.lra): registry, LRA's parameter rule, padding invariance, the two-tower head."""

from __future__ import annotations

import pytest
import torch

import sofa
from sofa.data.lra import PAD_ID, pad_batch
from sofa.mixers import SoftAttention
from sofa.models.flops import count_params

LRA_MODELS = ["lra_softmax", "lra_soft", "lra_soft_norm", "lra_set", "lra_pool"]
#: (vocabulary, positions, classes, two towers, padding id) of the five tasks' models
TASK_CONFIGS = {
    "listops": dict(vocab_size=16, max_len=2048, num_classes=10),
    "text": dict(vocab_size=257, max_len=4096, num_classes=2),
    "retrieval": dict(vocab_size=257, max_len=4096, num_classes=2, dual=True),
    "image": dict(vocab_size=256, max_len=1024, num_classes=10, padding_id=None),
}


def test_registered_and_listed():
    assert sofa.list_models("lra_*") == sorted(LRA_MODELS)
    from sofa.models.cli import model_rows

    rows = {r[0]: r for r in model_rows("lra_*", macs=True)}
    assert set(rows) == set(LRA_MODELS)
    assert all(float(r[5]) > 0 for r in rows.values())  # MACs counted on the model's own token input
    import timm

    assert type(timm.create_model("lra_soft", vocab_size=16, max_len=64)).__name__ == "LRAClassifier"


@pytest.mark.parametrize("task", sorted(TASK_CONFIGS))
def test_parameters_within_ten_percent_of_the_transformer(task):
    """LRA's rule: every model within ±10% of the Transformer baseline's parameters, for every task's model."""
    kw = TASK_CONFIGS[task]
    base = count_params(sofa.create_model("lra_softmax", **kw))
    for name in LRA_MODELS[1:]:
        n = count_params(sofa.create_model(name, **kw))
        assert abs(n - base) <= 0.10 * base, (name, n, base)
    # pooling alone would fall outside the rule without its wider FFN: the rule has teeth for this width
    narrow = count_params(sofa.create_model("lra_pool", ffn=128, **kw))
    assert narrow < 0.9 * base or task in ("text", "retrieval")


def test_harness_architecture():
    m = sofa.create_model("lra_softmax", vocab_size=16, max_len=2048, num_classes=10)
    assert len(m.encoder.blocks) == 2 and m.encoder.pos_embed.weight.shape == (2048, 64)
    block = m.encoder.blocks[0]
    assert [block.mlp[0].in_features, block.mlp[0].out_features] == [64, 128]
    assert isinstance(block.mlp[1], torch.nn.GELU) and block.mixer.num_heads == 2 and block.mixer.head_dim == 32
    assert [(layer.in_features, layer.out_features) for layer in (m.head[0], m.head[2])] == [(64, 128), (128, 10)]
    soft = sofa.create_model("lra_soft").encoder.blocks[0].mixer
    assert isinstance(soft, SoftAttention) and soft.max_landmarks == 128 and soft.landmark_stride == 1
    assert sofa.create_model("lra_set").encoder.blocks[0].mixer.num_refs == 128
    dual = sofa.create_model("lra_set", dual=True, num_classes=2)
    assert dual.head[0].in_features == 4 * 64


@pytest.mark.parametrize("name", LRA_MODELS)
def test_padding_never_changes_a_prediction(name):
    """The same sequences padded to two lengths (and batched with other lengths) give the same logits."""
    torch.manual_seed(0)
    m = sofa.create_model(name, vocab_size=16, max_len=512, num_classes=10).eval()
    lengths = [37, 180, 5]  # under and over the 128 landmarks / references
    seqs = [torch.randint(1, 16, (n,)) for n in lengths]
    with torch.no_grad():
        alone = torch.cat([m(s[None]) for s in seqs])
        short = m(pad_batch(seqs))  # padded to 180
        long = m(pad_batch(seqs, 300))
        # the padding's content is ignored too when a mask is given
        ids = pad_batch(seqs, 300)
        mask = ids != PAD_ID
        noisy = m(torch.where(mask, ids, torch.randint(1, 16, ids.shape)), mask)
    for other in (short, long, noisy):
        torch.testing.assert_close(other, alone, rtol=1e-4, atol=1e-5)
    # ... while the tokens themselves matter (the test can fail)
    changed = seqs[0].clone()
    changed[3] = 1 + changed[3] % 15
    assert not torch.allclose(m(changed[None]), alone[:1], atol=1e-5)


@pytest.mark.parametrize("name", LRA_MODELS)
def test_every_parameter_is_trained(name):
    """No parameter without a gradient (distributed training refuses unused parameters)."""
    m = sofa.create_model(name, vocab_size=16, max_len=256, num_classes=10, dual=True)
    ids = pad_batch([torch.randint(1, 16, (n,)) for n in (40, 150)])
    m((ids, ids.flip(0))).sum().backward()
    missing = [k for k, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_image_models_keep_id_zero_as_a_pixel():
    m = sofa.create_model("lra_soft", vocab_size=256, max_len=1024, padding_id=None).eval()
    img = torch.randint(0, 256, (1, 1024))
    img[0, :200] = 0  # black rows
    x = m.encoder(img, m.real_tokens(img, None))
    assert x[0, :200].abs().sum() > 0  # not treated as padding


def test_two_tower_features_are_symmetric_in_the_documents():
    """Both documents go through the same tower: swapping them swaps x₀ and x₁, keeps x₀·x₁, negates x₀−x₁."""
    torch.manual_seed(0)
    m = sofa.create_model("lra_soft", vocab_size=257, max_len=512, num_classes=2, dual=True).eval()
    a = pad_batch([torch.randint(1, 257, (n,)) for n in (90, 30)])
    b = pad_batch([torch.randint(1, 257, (n,)) for n in (60, 200)])
    with torch.no_grad():
        f_ab, f_ba = m.forward_features((a, b)), m.forward_features((b, a))
        x0, x1, prod, diff = f_ab.split(64, dim=-1)
        y0, y1, prod_ba, diff_ba = f_ba.split(64, dim=-1)
        torch.testing.assert_close(y0, x1)
        torch.testing.assert_close(y1, x0)
        torch.testing.assert_close(prod_ba, prod)
        torch.testing.assert_close(diff_ba, -diff)
        torch.testing.assert_close(x0, m.pooled(a))  # each tower is the one-document encoder
        # the head itself is not symmetric: the order of the pair is information it may use
        assert not torch.allclose(m((a, b)), m((b, a)))
    with pytest.raises(ValueError, match="pair"):
        m(a)


def test_too_long_sequences_and_image_inputs_fail_clearly():
    m = sofa.create_model("lra_pool", max_len=64)
    with pytest.raises(ValueError, match="64 positions"):
        m(torch.ones(1, 65, dtype=torch.long))
    mixer = SoftAttention(64, 2, sequence_only=True)
    assert mixer.landmark is None and mixer.dwconv is None
    with pytest.raises(ValueError, match="sequence_only"):
        mixer(torch.randn(1, 16, 64), hw=(4, 4))
