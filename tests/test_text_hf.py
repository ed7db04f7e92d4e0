"""The optional Hugging Face adapter (``sofa.hf``): auto classes, save/load round trip, weights from sofa."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers not installed (pip install 'sofa[hf]')")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

import sofa  # noqa: E402
import sofa.hf  # noqa: E402

V = 120


def _ids():
    ids = torch.randint(5, V, (2, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    ids[1, 8:], mask[1, 8:] = 0, False
    return ids, mask


def test_auto_classes_build_run_and_round_trip(tmp_path):
    config = sofa.hf.SofaTextConfig.from_sofa("text_tiny_set", vocab_size=V, max_position_embeddings=16)
    mlm = AutoModelForMaskedLM.from_config(config).eval()
    assert isinstance(mlm, sofa.hf.SofaTextForMaskedLM)
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight  # tied
    ids, mask = _ids()
    labels = torch.full_like(ids, -100)
    labels[0, 2] = 7
    out = mlm(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 12, V)
    torch.testing.assert_close(out.loss, -out.logits[0, 2].log_softmax(-1)[7])

    mlm.save_pretrained(tmp_path / "m")
    assert AutoConfig.from_pretrained(tmp_path / "m").mixer == "set"
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "m").eval()
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, out.logits)

    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", num_labels=3).eval()
    torch.testing.assert_close(
        clf.sofa.encoder.blocks[0].mlp[0].weight, mlm.sofa.encoder.blocks[0].mlp[0].weight
    )  # the pretrained encoder kept, a new head
    assert clf(input_ids=ids, attention_mask=mask).logits.shape == (2, 3)
    reg = AutoModelForSequenceClassification.from_config(
        sofa.hf.SofaTextConfig.from_sofa("text_tiny_pool", vocab_size=V, num_labels=1)
    )
    out = reg(input_ids=ids, attention_mask=mask, labels=torch.tensor([0.5, 1.0]))
    assert out.logits.shape == (2, 1) and out.loss.ndim == 0
    base = AutoModel.from_config(config).eval()
    assert base(input_ids=ids, attention_mask=mask).last_hidden_state.shape == (2, 12, 64 * 2)


def test_from_sofa_model_keeps_the_weights():
    model = sofa.create_model("text_tiny_soft", vocab_size=V, max_len=16).eval()
    hf = sofa.hf.from_sofa_model(model).eval()
    ids, mask = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, model(ids, mask).logits)
