"""BERT-shaped text encoders with each of sofa's token mixers: masked-language pretraining and fine-tuning heads.

The sizes are those of the compact BERTs of Turc et al. (2019, "Well-Read Students Learn Better"), so that a
pretrained model can be set beside the published BERT-tiny/mini/small/medium:

==========  ======  =====  =====  =========================================
size        layers  width  heads  BERT's parameters (vocabulary 30,522)
==========  ======  =====  =====  =========================================
``tiny``    2       128    2      4.4 M
``mini``    4       256    4      11.3 M
``small``   4       512    8      29.1 M
``medium``  8       512    8      41.7 M
==========  ======  =====  =====  =========================================

heads of width 64, FFN 4 × width with GELU, dropout 0.1. Embeddings: token + learned position (``max_len``,
default 128) + segment (``type_vocab_size`` 2), each N(0, 0.02), then LayerNorm and dropout, as BERT. The blocks
are pre-LayerNorm (``x + drop(mixer(LN(x)))``, ``x + FFN(LN(x))``, then a final LayerNorm; the LRA models'
block, :class:`sofa.models.lra.LRABlock`): BERT's post-LN blocks need a long warm-up to train, and the
softmax-free mixers train more reliably pre-LN. The mixers (names ``text_<size>_<mixer>``):

=============  ==============================================================================================
``softmax``    exact softmax attention, attention dropout 0.1: the BERT baseline
``soft``       SOFT: Gaussian-kernel attention, 64 landmarks (segment means of the real tokens' queries),
               Newton–Schulz pseudo-inverse
``soft_norm``  SOFT-Norm: the same with the symmetric normalisation
``set``        SeT: optimal transport onto 64 learned references (32 anchors, ε 0.1, 5 Sinkhorn iterations)
``pool``       PoolFormer pooling (width 3 over the real tokens); no mixing parameters
=============  ==============================================================================================

Heads (``head=``): ``"mlm"`` — dense + GELU + LayerNorm, then a decoder whose weight *is* the token embedding
matrix (tied) with its own bias, logits (B, N, vocab); ``"classification"`` / ``"regression"`` — BERT's
pooler (dense + tanh on the ``[CLS]`` token), dropout, linear to ``num_labels`` (1 for regression).
``forward(input_ids, attention_mask=None, token_type_ids=None, labels=None)`` returns a
:class:`TextModelOutput`: cross-entropy over labels other than -100 (MLM, classification) or mean squared error
(regression), None without labels. Padding never changes the logits of real tokens: every mixer ignores padded
positions (``attention_mask`` False, or ``input_ids == pad_id`` when no mask is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from sofa.models.lra import LRABlock, build_sequence_mixer
from sofa.models.registry import register_model

__all__ = [
    "TextModel",
    "TextEncoder",
    "TextEmbeddings",
    "TextModelOutput",
    "TEXT_SIZES",
    "TEXT_MIXERS",
    "TEXT_HEADS",
    "load_pretrained_encoder",
    "checkpoint_filter_fn",
]

#: size → (layers, width); heads are width / 64, FFN 4 × width
TEXT_SIZES: Dict[str, Tuple[int, int]] = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512)}
#: BERT's parameters (M) at each size (Turc et al. 2019, vocabulary 30,522, 512 positions)
BERT_PARAMS = {"tiny": 4.4, "mini": 11.3, "small": 29.1, "medium": 41.7}
HEAD_DIM, MLP_RATIO, DROP, LANDMARKS = 64, 4, 0.1, 64
#: BERT's uncased WordPiece vocabulary: the default size, so that parameter counts compare with BERT's
DEFAULT_VOCAB = 30522
TEXT_DEFAULT_LEN = 128
#  name          mixer kind   mixer arguments
TEXT_MIXERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "softmax": ("attn", dict(attn_drop=DROP)),
    "soft": ("soft", dict(landmark_stride=1, max_landmarks=LANDMARKS)),
    "soft_norm": ("soft", dict(landmark_stride=1, max_landmarks=LANDMARKS, normalized=True)),
    "set": ("set", dict(num_refs=LANDMARKS)),
    "pool": ("pool", dict(pool_size=3)),
}
TEXT_HEADS = ("mlm", "classification", "regression")


@dataclass
class TextModelOutput:
    """``loss``: scalar (None without labels); ``logits``: (B, N, vocab) for MLM, (B, num_labels) otherwise."""

    loss: Optional[torch.Tensor]
    logits: torch.Tensor


class TextEmbeddings(nn.Module):
    """Token + position + segment embeddings, LayerNorm, dropout: ids (B, N) → (B, N, C)."""

    def __init__(self, vocab_size: int, dim: int, max_len: int, type_vocab_size: int, drop: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        for e in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            nn.init.normal_(e.weight, std=0.02)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(drop)

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        N = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:N]
        if token_type_ids is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        else:
            x = x + self.token_type_embeddings.weight[0]
        return self.drop(self.norm(x))


class TextEncoder(nn.Module):
    """Embeddings, pre-LN blocks, final LayerNorm: ids (B, N) → tokens (B, N, C), zero at padded positions."""

    def __init__(
        self,
        mixer: str,
        vocab_size: int = DEFAULT_VOCAB,
        depth: int = 4,
        dim: int = 256,
        max_len: int = TEXT_DEFAULT_LEN,
        type_vocab_size: int = 2,
        drop: float = DROP,
        mixer_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if mixer not in TEXT_MIXERS:
            raise ValueError(f"unknown text mixer {mixer!r}; choose from {', '.join(TEXT_MIXERS)}")
        if dim % HEAD_DIM:
            raise ValueError(f"TextEncoder: width {dim} is not a multiple of the head width {HEAD_DIM}")
        kind, kw = TEXT_MIXERS[mixer]
        kw = {**kw, **(mixer_kwargs or {})}
        self.max_len, self.dim = max_len, dim
        self.embeddings = TextEmbeddings(vocab_size, dim, max_len, type_vocab_size, drop)
        heads = dim // HEAD_DIM
        self.blocks = nn.ModuleList(
            LRABlock(build_sequence_mixer(kind, dim, heads, **kw), dim, MLP_RATIO * dim, drop) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"TextEncoder: expected token ids (B, N), got shape {tuple(input_ids.shape)}")
        N = input_ids.shape[1]
        if N > self.max_len:
            raise ValueError(f"TextEncoder: {N} tokens, but the model has {self.max_len} positions (max_len)")
        mask = None if attention_mask is None else attention_mask.bool()
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


class MLMHead(nn.Module):
    """dense + GELU + LayerNorm, then the decoder (weight tied to the token embeddings, own bias)."""

    def __init__(self, dim: int, embedding: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.decoder = nn.Linear(dim, embedding.num_embeddings)
        self.decoder.weight = embedding.weight  # tied: one Parameter
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.transform(x))))


class PooledHead(nn.Module):
    """BERT's pooler (dense + tanh on the first token, ``[CLS]``), dropout, linear: (B, N, C) → (B, labels)."""

    def __init__(self, dim: int, num_labels: int, drop: float):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.dense(x[:, 0]))))


class TextModel(nn.Module):
    """A text encoder with one head (see the module docstring)."""

    def __init__(
        self,
        mixer: str = "softmax",
        depth: int = 4,
        dim: int = 256,
        vocab_size: int = DEFAULT_VOCAB,
        max_len: int = TEXT_DEFAULT_LEN,
        head: str = "mlm",
        num_labels: int = 2,
        type_vocab_size: int = 2,
        pad_id: Optional[int] = 0,
        drop_rate: float = DROP,
        mixer_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if head not in TEXT_HEADS:
            raise ValueError(f"unknown text head {head!r}; choose from {', '.join(TEXT_HEADS)}")
        if head == "regression":
            num_labels = 1
        self.mixer, self.head_kind, self.num_labels = mixer, head, num_labels
        self.vocab_size, self.max_len, self.pad_id, self.num_features = vocab_size, max_len, pad_id, dim
        self.encoder = TextEncoder(mixer, vocab_size, depth, dim, max_len, type_vocab_size, drop_rate, mixer_kwargs)
        if head == "mlm":
            self.head: nn.Module = MLMHead(dim, self.encoder.embeddings.word_embeddings)
        else:
            self.head = PooledHead(dim, num_labels, drop_rate)

    @property
    def num_classes(self) -> int:
        return self.vocab_size if self.head_kind == "mlm" else self.num_labels

    def real_tokens(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The padding mask (B, N), True where a token is real; None when every token is."""
        if attention_mask is not None:
            return attention_mask.bool()
        return None if self.pad_id is None else input_ids != self.pad_id

    def forward_features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The encoder's tokens (B, N, C)."""
        return self.encoder(input_ids, self.real_tokens(input_ids, attention_mask), token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> TextModelOutput:
        logits = self.head(self.forward_features(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            if self.head_kind == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=-100
                )
        return TextModelOutput(loss, logits)

    def example_input(self, length: int = TEXT_DEFAULT_LEN, batch: int = 1) -> torch.Tensor:
        """Random non-padding ids of ``min(length, max_len)`` tokens: what ``sofa models --macs`` counts at."""
        length = min(length, self.max_len)
        device = self.encoder.embeddings.word_embeddings.weight.device
        return torch.randint(1, max(self.vocab_size, 2), (batch, length), device=device)


# ------------------------------------------------------------------------------------------------ weights
def checkpoint_filter_fn(state: Dict, model=None) -> Dict:
    """The text models have no released checkpoints: sofa's own keys pass through."""
    return state


ENCODER_PREFIX = "encoder."


def load_pretrained_encoder(model: nn.Module, run_or_checkpoint: Union[str, Path]) -> Dict[str, Any]:
    """Put the encoder (embeddings, blocks, final norm) of a pretraining run into ``model`` (a
    :class:`TextModel` with any head); the checkpoint's head (MLM) is ignored, ``model``'s head is left as built.

    ``run_or_checkpoint``: a ``sofa pretrain`` / ``sofa train --task mlm`` run directory (its best weights, the
    final ones where none was recorded), a ``.safetensors`` file or a ``last.pt``. A model with fewer positions
    than the checkpoint takes the first ``max_len`` ones. Raises ``UserError`` when the encoders differ in shape
    (width, depth, vocabulary, mixer) and names what differs. Returns the checkpoint's metadata.
    """
    from sofa.checkpoint import read_checkpoint, resolve_checkpoint
    from sofa.errors import UserError

    try:
        path = resolve_checkpoint(run_or_checkpoint)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    state, meta = read_checkpoint(path)
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise UserError(f"{path}: no encoder weights (keys 'encoder.*'): not a text model checkpoint")
    target = model.encoder.state_dict()
    pos = "embeddings.position_embeddings.weight"
    if pos in encoder and pos in target and encoder[pos].shape[0] > target[pos].shape[0]:
        encoder[pos] = encoder[pos][: target[pos].shape[0]]
    missing = sorted(set(target) - set(encoder))
    unexpected = sorted(set(encoder) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(encoder[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(encoder))
        if tuple(encoder[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or mismatched:
        what = meta.get("model") or (meta.get("config") or {}).get("model") or "another architecture"
        lines = [f"{path} holds an encoder of {what} that does not fit this model"]
        if mismatched:
            lines.append("shapes differ (width, vocabulary or positions): " + "; ".join(mismatched[:4]))
        if missing:
            lines.append(f"missing: {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            lines.append(f"unexpected: {', '.join(unexpected[:6])}" + (" ..." if len(unexpected) > 6 else ""))
        raise UserError("; ".join(lines))
    model.encoder.load_state_dict(encoder)
    return meta


# ------------------------------------------------------------------------------------------------ registry
_CFG = dict(
    input_size=(TEXT_DEFAULT_LEN,),
    num_classes=DEFAULT_VOCAB,
    mean=(),
    std=(),
    crop_pct=1.0,
    interpolation="",
    first_conv="encoder.embeddings.word_embeddings",
    classifier="head.out",
    license="apache-2.0",
)
_NOTES = {
    "softmax": "softmax attention (BERT)",
    "soft": "SOFT, 64 landmarks",
    "soft_norm": "SOFT-Norm, 64 landmarks",
    "set": "SeT, 64 references",
    "pool": "pooling",
}


def _paper(size: str, mixer: str) -> dict:
    depth, dim = TEXT_SIZES[size]
    out: Dict[str, Any] = dict(
        note=f"text encoder {depth}/{dim} (BERT-{size}'s shape), MLM head, vocab {DEFAULT_VOCAB}: {_NOTES[mixer]}; "
        f"GMACs at {TEXT_DEFAULT_LEN} tokens"
    )
    if mixer == "softmax":
        out["params"] = BERT_PARAMS[size]
    return out


def _create_text(
    name: str,
    size: str,
    mixer: str,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    pretrained_cfg_overlay=None,
    **kwargs,
) -> TextModel:
    """Model ``name``: a :class:`TextModel` of ``size`` with the ``mixer`` token mixer; ``kwargs`` go to its
    constructor (``num_classes`` is taken as ``num_labels``; image-model options passed as None are dropped)."""
    if pretrained and checkpoint_path is None:
        raise ValueError(f"{name}: sofa downloads no weights; pass checkpoint_path= to load a trained run")
    for key in ("img_size", "drop_path_rate", "in_chans"):
        if kwargs.get(key, None) is None:
            kwargs.pop(key, None)
    if "num_classes" in kwargs:
        n = kwargs.pop("num_classes")
        if n is not None and kwargs.get("head", "mlm") != "mlm":
            kwargs.setdefault("num_labels", n)
    depth, dim = TEXT_SIZES[size]
    model = TextModel(mixer, depth, dim, **kwargs)
    model.pretrained_cfg = dict(
        _CFG,
        architecture=name,
        num_classes=model.num_classes,
        classifier="head.decoder" if model.head_kind == "mlm" else "head.out",
        **(pretrained_cfg_overlay or {}),
    )
    model.default_cfg = model.pretrained_cfg
    if checkpoint_path is not None:
        from sofa.checkpoint import load_model_weights, read_checkpoint

        state, _ = read_checkpoint(checkpoint_path)
        load_model_weights(model, state, f"checkpoint {checkpoint_path}")
    return model


def _entry(size: str, mixer: str):
    name = f"text_{size}_{mixer}"

    def fn(pretrained: bool = False, **kwargs) -> TextModel:
        return _create_text(name, size, mixer, pretrained, **kwargs)

    depth, dim = TEXT_SIZES[size]
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"Text encoder {depth} layers × {dim} (BERT-{size}'s shape) with the {mixer} token mixer."
    register_model("text", _CFG, _paper(size, mixer))(fn)
    return fn


for _size in TEXT_SIZES:
    for _mixer in TEXT_MIXERS:
        globals()[f"text_{_size}_{_mixer}"] = _entry(_size, _mixer)
del _size, _mixer
