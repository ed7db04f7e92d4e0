"""Long Range Arena sequence classifiers: the model of the Nyströmformer LRA harness with each of sofa's mixers.

The configuration is the one of the Nyströmformer harness (``mlpen/Nystromformer``, ``LRA/code``), which
Skyformer and xformers' LRA benchmark reuse, so that only the token mixer differs from the published baselines:

* token embedding (N(0, 0.02)) + learned positional embedding (N(0, 0.02); ``max_len`` positions, the harness
  rounds the task's length up to a power of two: 2,048 for ListOps, 4,096 for text and retrieval, 1,024 for
  images), dropout 0.1;
* 2 pre-LayerNorm blocks of width 64: ``x + drop(mixer(LN(x)))``, ``x + drop(FFN(LN(x)))`` with
  FFN = Linear(64→128) → GELU → dropout → Linear(128→64);
* a final LayerNorm, the mean over the real tokens (padding left out), and the head
  Linear(64→128) → ReLU → Linear(128→classes);
* retrieval (``dual=True``): both documents go through the same encoder (one tower, shared weights) and the head
  reads [x₀, x₁, x₀·x₁, x₀−x₁] (256 features).

The mixers (all with 2 heads of 32):

=================  ==============================================================================================
``lra_softmax``    exact softmax attention (``F.scaled_dot_product_attention``), attention dropout 0.1: the
                   LRA "Transformer" baseline
``lra_soft``       SOFT: Gaussian-kernel attention, 128 landmarks (segment means of the real tokens' queries;
                   fewer for sequences shorter than 128 tokens), Newton–Schulz pseudo-inverse
``lra_soft_norm``  SOFT-Norm: the same with the symmetric normalisation D^{-½}·A⁺·D^{-½}
``lra_set``        SeT: optimal transport onto 128 learned references (32 anchors, ε 0.1, 5 Sinkhorn iterations,
                   position filter τ 0.1)
``lra_pool``       PoolFormer pooling (width 3 over the real tokens) with FFN 256 (PoolFormer's MLP ratio 4):
                   the parameter-free mixer needs the wider FFN to stay within LRA's rule of ±10% of the
                   Transformer's parameters
=================  ==============================================================================================

Padding never changes a prediction: every mixer ignores padded tokens, and the pooling averages real tokens only.
Token id ``padding_id`` (0, the vocabularies' padding) marks padding unless a ``mask`` is given; image tasks,
whose id 0 is a black pixel, build the model with ``padding_id=None``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sofa.mixers import Pooling, SeTAttention, SoftAttention, SoftmaxAttention
from sofa.models.registry import register_model

__all__ = ["LRAClassifier", "LRAEncoder", "LRA_VARIANTS", "LRA_DEFAULT_LEN", "checkpoint_filter_fn"]

#: the harness's numbers: width, blocks, heads, FFN width, dropout, head width, landmarks / references
DIM, DEPTH, HEADS, FFN, DROP, HEAD_HIDDEN, LANDMARKS = 64, 2, 2, 128, 0.1, 128, 128
#: the sequence length at which ``sofa models`` counts the multiply-accumulates
LRA_DEFAULT_LEN = 1024

#  name              mixer kind   mixer arguments                                                    FFN width
LRA_VARIANTS: Dict[str, Tuple[str, Dict[str, Any], int]] = {
    "softmax": ("attn", dict(attn_drop=DROP), FFN),
    "soft": ("soft", dict(landmark_stride=1, max_landmarks=LANDMARKS), FFN),
    "soft_norm": ("soft", dict(landmark_stride=1, max_landmarks=LANDMARKS, normalized=True), FFN),
    "set": ("set", dict(num_refs=LANDMARKS), FFN),
    "pool": ("pool", dict(pool_size=3), 2 * FFN),
}


def build_sequence_mixer(kind: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    """A mixer for sequences, with no parameter that only images use (so that every parameter is trained)."""
    if kind == "attn":
        return SoftmaxAttention(dim, num_heads, **kwargs)
    if kind == "soft":
        return SoftAttention(dim, num_heads, dwconv_kernel=0, sequence_only=True, **kwargs)
    if kind == "set":
        return SeTAttention(dim, num_heads, lepe=False, **kwargs)
    if kind == "pool":
        return Pooling(**kwargs)
    raise ValueError(f"unknown sequence mixer {kind!r}; choose from attn, soft, set, pool")


class LRABlock(nn.Module):
    """Pre-LN block: ``x + drop(mixer(LN(x), mask))``, then ``x + FFN(LN(x))`` (FFN with GELU and dropout)."""

    def __init__(self, mixer: nn.Module, dim: int, ffn: int, drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop1 = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(drop), nn.Linear(ffn, dim), nn.Dropout(drop)
        )

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.drop1(self.mixer(self.norm1(x), mask=mask))
        return x + self.mlp(self.norm2(x))


class LRAEncoder(nn.Module):
    """Embeddings, blocks and the final norm: ids (B, N) → tokens (B, N, C) (zero at padded positions)."""

    def __init__(
        self,
        mixer: str,
        mixer_kwargs: Dict[str, Any],
        vocab_size: int,
        max_len: int,
        dim: int = DIM,
        depth: int = DEPTH,
        num_heads: int = HEADS,
        ffn: int = FFN,
        drop: float = DROP,
    ):
        super().__init__()
        self.max_len = max_len
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
        self.drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(
            LRABlock(build_sequence_mixer(mixer, dim, num_heads, **mixer_kwargs), dim, ffn, drop) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"LRAEncoder: expected token ids (B, N), got shape {tuple(ids.shape)}")
        B, N = ids.shape
        if N > self.max_len:
            raise ValueError(f"LRAEncoder: {N} tokens, but the model has {self.max_len} positions (max_len)")
        x = self.drop(self.token_embed(ids) + self.pos_embed.weight[:N])
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


Ids = Union[torch.Tensor, Sequence[torch.Tensor]]


class LRAClassifier(nn.Module):
    """An LRA sequence classifier: encoder, mean over the real tokens, MLP head (see the module docstring).

    ``forward(ids, mask=None)``: ``ids`` (B, N) token ids, or for a two-tower model (``dual=True``) the pair
    ``(ids_0, ids_1)``; ``mask`` (B, N) True where a token is real (a pair of masks for two towers); when None it
    is ``ids != padding_id`` (or all tokens when ``padding_id`` is None). Returns logits (B, num_classes).
    """

    def __init__(
        self,
        mixer: str = "softmax",
        num_classes: int = 10,
        vocab_size: int = 257,
        max_len: int = 4096,
        dual: bool = False,
        padding_id: Optional[int] = 0,
        dim: int = DIM,
        depth: int = DEPTH,
        num_heads: int = HEADS,
        ffn: Optional[int] = None,
        drop_rate: float = DROP,
        head_hidden: int = HEAD_HIDDEN,
        mixer_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if mixer not in LRA_VARIANTS:
            raise ValueError(f"unknown LRA mixer {mixer!r}; choose from {', '.join(LRA_VARIANTS)}")
        kind, kw, default_ffn = LRA_VARIANTS[mixer]
        self.mixer, self.num_classes, self.vocab_size, self.max_len = mixer, num_classes, vocab_size, max_len
        self.dual, self.padding_id, self.num_features = dual, padding_id, dim
        self.encoder = LRAEncoder(
            kind,
            {**kw, **(mixer_kwargs or {})},
            vocab_size,
            max_len,
            dim,
            depth,
            num_heads,
            ffn or default_ffn,
            drop_rate,
        )
        self.head = nn.Sequential(
            nn.Linear(dim * (4 if dual else 1), head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes)
        )

    def real_tokens(self, ids: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The padding mask (B, N), True where a token is real; None when every token is."""
        if mask is not None:
            return mask.bool()
        return None if self.padding_id is None else ids != self.padding_id

    def pooled(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One document's features (B, C): the final norm's output averaged over its real tokens."""
        mask = self.real_tokens(ids, mask)
        x = self.encoder(ids, mask)
        if mask is None:
            return x.mean(1)
        return x.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(x.dtype)

    def pair_features(self, ids: Sequence[torch.Tensor], mask: Optional[Sequence] = None) -> torch.Tensor:
        """Two-tower features [x₀, x₁, x₀·x₁, x₀−x₁] (B, 4C) of a document pair."""
        ids_0, ids_1 = ids
        mask_0, mask_1 = (None, None) if mask is None else mask
        x0, x1 = self.pooled(ids_0, mask_0), self.pooled(ids_1, mask_1)
        return torch.cat([x0, x1, x0 * x1, x0 - x1], dim=-1)

    def forward_features(self, ids: Ids, mask=None) -> torch.Tensor:
        """The head's input: (B, C), or (B, 4C) for two towers."""
        if self.dual:
            if isinstance(ids, torch.Tensor) or len(ids) != 2:
                raise ValueError("LRAClassifier: a two-tower (dual) model takes a pair of id tensors (ids_0, ids_1)")
            return self.pair_features(ids, mask)
        if not isinstance(ids, torch.Tensor):
            raise ValueError(
                "LRAClassifier: a one-tower model takes one id tensor (B, N); build it with dual=True "
                "for document pairs"
            )
        return self.pooled(ids, mask)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, ids: Ids, mask=None) -> torch.Tensor:
        return self.forward_head(self.forward_features(ids, mask))

    def example_input(self, length: int = LRA_DEFAULT_LEN, batch: int = 1) -> Ids:
        """Random non-padding ids of ``length`` tokens (a pair for two towers): what ``sofa models`` counts at."""
        length = min(length, self.max_len)
        device = self.encoder.token_embed.weight.device
        low = 1 if self.padding_id == 0 else 0

        def draw():
            return torch.randint(low, max(self.vocab_size, low + 1), (batch, length), device=device)

        return (draw(), draw()) if self.dual else draw()


def next_power_of_two(n: int) -> int:
    """The harness's table size for a task of ``n`` tokens: the next power of two (2,000 → 2,048)."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


_CFG = dict(
    input_size=(LRA_DEFAULT_LEN,),
    num_classes=10,
    mean=(),
    std=(),
    crop_pct=1.0,
    interpolation="",
    first_conv="encoder.token_embed",
    classifier="head.2",
    license="apache-2.0",
)
_NOTES = {
    "softmax": "LRA Transformer baseline",
    "soft": "SOFT, 128 landmarks",
    "soft_norm": "SOFT-Norm, 128 landmarks",
    "set": "SeT, 128 references",
    "pool": "pooling, FFN 256",
}


def checkpoint_filter_fn(state: Dict, model=None) -> Dict:
    """The LRA classifiers have no released checkpoints: sofa's own keys pass through."""
    return state


def _paper(mixer: str) -> dict:
    return dict(
        note=f"LRA (Nyströmformer harness, width 64, 2 layers): {_NOTES[mixer]}; GMACs at {LRA_DEFAULT_LEN} tokens"
    )


def _create_lra(
    name: str,
    mixer: str,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    pretrained_cfg_overlay=None,
    **kwargs,
) -> LRAClassifier:
    """Model ``name``: an :class:`LRAClassifier` with the ``mixer`` token mixer; ``kwargs`` go to its constructor
    (image-model options passed as None by generic callers are dropped)."""
    if pretrained and checkpoint_path is None:
        raise ValueError(f"{name}: sofa downloads no weights; pass checkpoint_path= to load a trained run")
    for key in ("img_size", "drop_path_rate"):
        if kwargs.get(key, None) is None:
            kwargs.pop(key, None)
    model = LRAClassifier(mixer, **kwargs)
    model.pretrained_cfg = dict(
        _CFG, architecture=name, num_classes=model.num_classes, **(pretrained_cfg_overlay or {})
    )
    model.default_cfg = model.pretrained_cfg
    if checkpoint_path is not None:
        from sofa.checkpoint import load_model_weights, read_checkpoint

        state, _ = read_checkpoint(checkpoint_path)
        load_model_weights(model, state, f"checkpoint {checkpoint_path}")
    return model


@register_model("lra", _CFG, _paper("softmax"))
def lra_softmax(pretrained: bool = False, **kwargs) -> LRAClassifier:
    """LRA classifier (Nyströmformer harness configuration) with softmax attention."""
    return _create_lra("lra_softmax", "softmax", pretrained, **kwargs)


@register_model("lra", _CFG, _paper("soft"))
def lra_soft(pretrained: bool = False, **kwargs) -> LRAClassifier:
    """LRA classifier (Nyströmformer harness configuration) with SOFT attention."""
    return _create_lra("lra_soft", "soft", pretrained, **kwargs)


@register_model("lra", _CFG, _paper("soft_norm"))
def lra_soft_norm(pretrained: bool = False, **kwargs) -> LRAClassifier:
    """LRA classifier (Nyströmformer harness configuration) with SOFT-Norm attention."""
    return _create_lra("lra_soft_norm", "soft_norm", pretrained, **kwargs)


@register_model("lra", _CFG, _paper("set"))
def lra_set(pretrained: bool = False, **kwargs) -> LRAClassifier:
    """LRA classifier (Nyströmformer harness configuration) with SeT attention."""
    return _create_lra("lra_set", "set", pretrained, **kwargs)


@register_model("lra", _CFG, _paper("pool"))
def lra_pool(pretrained: bool = False, **kwargs) -> LRAClassifier:
    """LRA classifier (Nyströmformer harness configuration) with pooling."""
    return _create_lra("lra_pool", "pool", pretrained, **kwargs)
