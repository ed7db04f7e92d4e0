"""Hugging Face ``transformers`` adapter for sofa's text encoders (optional: ``pip install 'sofa[hf]'``).

Importing this module (nothing in sofa does) registers ``SofaTextConfig`` (``model_type`` ``"sofa-text"``) and
its models with transformers' auto classes, so that the usual calls work::

    import sofa.hf
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    config = sofa.hf.SofaTextConfig.from_sofa("text_mini_set", vocab_size=261)
    mlm = AutoModelForMaskedLM.from_config(config)
    mlm.save_pretrained("out")                                   # config.json + model.safetensors
    clf = AutoModelForSequenceClassification.from_pretrained("out", num_labels=3)   # encoder kept, new head

=======================================  ===============================  ==================================
auto class                               model                            returns
=======================================  ===============================  ==================================
``AutoModel``                            :class:`SofaTextModel`           ``BaseModelOutput`` (tokens)
``AutoModelForMaskedLM``                 :class:`SofaTextForMaskedLM`     ``MaskedLMOutput``
``AutoModelForSequenceClassification``   :class:`SofaTextForSequence...`  ``SequenceClassifierOutput``
=======================================  ===============================  ==================================

Each wraps a :class:`sofa.models.text.TextModel` as ``.sofa`` (parameter names ``sofa.encoder.*`` /
``sofa.head.*``): :func:`from_sofa_model` turns a sofa model (e.g. one loaded from a ``sofa pretrain`` run) into
the matching transformers model with the same weights. ``num_labels == 1`` is regression (MSE), as in
transformers. Loading from the Hub is transformers' business: sofa itself never downloads.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

try:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
except ImportError as err:  # pragma: no cover - exercised only without transformers
    from sofa.errors import UserError

    raise UserError(
        "sofa.hf needs the transformers package: pip install 'sofa[hf]' (or pip install transformers)"
    ) from err

from sofa.models.text import TEXT_MIXERS, TEXT_SIZES, TextEncoder, TextModel

__all__ = [
    "SofaTextConfig",
    "SofaTextModel",
    "SofaTextForMaskedLM",
    "SofaTextForSequenceClassification",
    "from_sofa_model",
    "register",
]

MODEL_TYPE = "sofa-text"


class SofaTextConfig(PretrainedConfig):
    """The architecture of a sofa text encoder: ``mixer`` (softmax, soft, soft_norm, set, pool), depth and width
    (``num_hidden_layers``, ``hidden_size``), ``vocab_size``, ``max_position_embeddings``, ``type_vocab_size``,
    dropout ``hidden_dropout_prob``, extra ``mixer_kwargs``."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        mixer: str = "softmax",
        num_hidden_layers: int = 4,
        hidden_size: int = 256,
        vocab_size: int = 30522,
        max_position_embeddings: int = 128,
        type_vocab_size: int = 2,
        hidden_dropout_prob: float = 0.1,
        mixer_kwargs: Optional[Dict[str, Any]] = None,
        pad_token_id: int = 0,
        **kwargs,
    ):
        if mixer not in TEXT_MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; choose from {', '.join(TEXT_MIXERS)}")
        self.mixer = mixer
        self.num_hidden_layers = num_hidden_layers
        self.hidden_size = hidden_size
        self.num_attention_heads = hidden_size // 64
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.mixer_kwargs = dict(mixer_kwargs or {})
        kwargs.setdefault("tie_word_embeddings", True)  # the MLM decoder is the token embedding matrix
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @classmethod
    def from_sofa(cls, name: str, **kwargs) -> "SofaTextConfig":
        """The configuration of registered model ``name`` (``text_<size>_<mixer>``); ``kwargs`` override."""
        parts = name.split("_", 2)
        if len(parts) != 3 or parts[0] != "text" or parts[1] not in TEXT_SIZES or parts[2] not in TEXT_MIXERS:
            raise ValueError(f"{name!r} is not a sofa text model (text_<size>_<mixer>)")
        depth, dim = TEXT_SIZES[parts[1]]
        kw: Dict[str, Any] = dict(mixer=parts[2], num_hidden_layers=depth, hidden_size=dim)
        kw.update(kwargs)
        return cls(**kw)


def _sofa_model(config: SofaTextConfig, head: str) -> TextModel:
    return TextModel(
        config.mixer,
        config.num_hidden_layers,
        config.hidden_size,
        vocab_size=config.vocab_size,
        max_len=config.max_position_embeddings,
        head=head,
        num_labels=max(int(config.num_labels), 1),
        type_vocab_size=config.type_vocab_size,
        pad_id=config.pad_token_id,
        drop_rate=config.hidden_dropout_prob,
        mixer_kwargs=config.mixer_kwargs,
    )


class SofaTextPreTrainedModel(PreTrainedModel):
    config_class = SofaTextConfig
    base_model_prefix = "sofa"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        """sofa's modules initialise themselves when built; nothing to redo."""


class SofaTextModel(SofaTextPreTrainedModel):
    """The bare encoder: ``last_hidden_state`` (B, N, C), zero at padded positions."""

    def __init__(self, config: SofaTextConfig):
        super().__init__(config)
        self.sofa = TextEncoder(
            config.mixer,
            config.vocab_size,
            config.num_hidden_layers,
            config.hidden_size,
            config.max_position_embeddings,
            config.type_vocab_size,
            config.hidden_dropout_prob,
            config.mixer_kwargs,
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.sofa.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, return_dict=None, **kwargs):
        x = self.sofa(input_ids, attention_mask, token_type_ids)
        return BaseModelOutput(last_hidden_state=x)


class SofaTextForMaskedLM(SofaTextPreTrainedModel):
    """Encoder + the tied MLM head; ``labels`` -100 where nothing is predicted."""

    _tied_weights_keys = {"sofa.head.decoder.weight": "sofa.encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: SofaTextConfig):
        super().__init__(config)
        self.sofa = _sofa_model(config, "mlm")
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.sofa.encoder.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.sofa.head.decoder

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None, **kw):
        out = self.sofa(input_ids, attention_mask, token_type_ids, labels)
        return MaskedLMOutput(loss=out.loss, logits=out.logits)


class SofaTextForSequenceClassification(SofaTextPreTrainedModel):
    """Encoder + BERT's pooler and a linear head; ``num_labels`` 1 is regression (MSE)."""

    def __init__(self, config: SofaTextConfig):
        super().__init__(config)
        self.sofa = _sofa_model(config, "regression" if config.num_labels == 1 else "classification")
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.sofa.encoder.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None, **kw):
        out = self.sofa(input_ids, attention_mask, token_type_ids, labels)
        return SequenceClassifierOutput(loss=out.loss, logits=out.logits)


def from_sofa_model(model: TextModel, name: Optional[str] = None) -> SofaTextPreTrainedModel:
    """The transformers model (masked LM or sequence classifier, by ``model``'s head) holding ``model``'s
    weights. ``name``: the registered name, for the config (default: ``model.pretrained_cfg['architecture']``)."""
    name = name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    enc = model.encoder
    config = SofaTextConfig(
        mixer=model.mixer,
        num_hidden_layers=len(enc.blocks),
        hidden_size=enc.dim,
        vocab_size=model.vocab_size,
        max_position_embeddings=enc.max_len,
        type_vocab_size=enc.embeddings.token_type_embeddings.num_embeddings,
        pad_token_id=model.pad_id if model.pad_id is not None else 0,
        num_labels=1 if model.head_kind == "regression" else (model.num_labels if model.head_kind != "mlm" else 2),
        name_or_path=name or "",
    )
    cls = SofaTextForMaskedLM if model.head_kind == "mlm" else SofaTextForSequenceClassification
    out = cls(config)
    out.sofa.load_state_dict(model.state_dict())
    return out


def register() -> None:
    """Register the config and models with transformers' auto classes (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, SofaTextConfig)
    except ValueError:  # already registered
        return
    AutoModel.register(SofaTextConfig, SofaTextModel)
    AutoModelForMaskedLM.register(SofaTextConfig, SofaTextForMaskedLM)
    AutoModelForSequenceClassification.register(SofaTextConfig, SofaTextForSequenceClassification)


register()
