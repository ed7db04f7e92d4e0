"""MetaFormer: the macro-architecture shared by PoolFormer, its hybrids and SeTformer, with a token mixer per stage.

A block is ``x = x + DropPath(ls1 · Mixer(Norm1(x)))`` then ``x = x + DropPath(ls2 · MLP(Norm2(x)))`` with
per-channel LayerScale vectors ``ls1``, ``ls2`` (Yu et al., "MetaFormer is Actually What You Need for Vision").

Two block layouts, chosen by the norm:

* ``norm="groupnorm"`` (PoolFormer): the block works on (B, C, H, W) maps: GroupNorm with one group, the mixer,
  1×1-convolution MLP, all in one op, :func:`sofa.ops.pool.metaformer_block`. Pooling and identity run on the
  map directly; a token mixer (SOFT, SeT, softmax attention) sees the map as (B, H·W, C) tokens with
  ``hw=(H, W)`` for the mixer call only. No per-block layout conversion is paid by the pooling stages.
* ``norm="layernorm"`` (SeTformer): the stage works on (B, N, C) tokens: LayerNorm, the mixer, Linear MLP; the
  stage converts from and to (B, C, H, W) once at its ends.

Stage outputs are always (B, C, H, W), so ``forward_intermediates`` (and timm's ``features_only``) give maps at
strides 4, 8, 16, 32 for any input size. Token mixers come from :func:`sofa.mixers.build_mixer`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from sofa import switches
from sofa.layers import Linear
from sofa.mixers.simple import Pooling
from sofa.ops.common import is_tracing
from sofa.ops.linear import linear_gelu
from sofa.ops.pool import BlockWeights, metaformer_block, metaformer_block_folded
from sofa.ops.pool import choose_impl as choose_block_impl

__all__ = [
    "MetaFormer",
    "MetaFormerBlock",
    "TokenBlock",
    "MixerSpec",
    "resize_pos_embed_2d",
    "check_image_input",
    "take_indices",
]

MixerSpec = Union[str, Dict[str, Any]]
#: mixers that work on (B, C, H, W) maps as they are (the rest take (B, N, C) tokens)
MAP_MIXERS = ("pool", "identity")


# ---------------------------------------------------------------------------------------------------- layers
class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group: normalises over (C, H, W) together, per-channel affine (PoolFormer's norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(1, num_channels, eps=eps)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class ClassifierMixin:
    """timm's classifier conventions, shared by the model families: ``self.stages`` (each with a
    ``grad_checkpointing`` flag), ``self.head`` (a Linear, or Identity for no classes), ``self.num_features``,
    and ``forward`` = ``forward_head(forward_features(x))``."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _new_head(self, num_classes: int) -> None:
        """A freshly initialised classifier (trunc-normal 0.02 weights, zero bias) for ``num_classes``."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)


class ConvMlp(nn.Module):
    """1×1 conv → GELU → 1×1 conv on (B, C, H, W)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _hooked(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has a forward hook or pre-hook (a fused path that skips calling them must not
    run then)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class Mlp(nn.Module):
    """Linear → GELU → Linear on (B, N, C)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        if torch.jit.is_scripting():
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        if type(self.act) is nn.GELU and not is_tracing() and not _hooked(self.fc1, self.act):
            # fc1 and its GELU as one GEMM where that runs (sofa.ops.linear.linear_gelu): the same numbers
            h = linear_gelu(x, self.fc1.weight, self.fc1.bias, self.act.approximate)
            return self.drop(self.fc2(self.drop(h)))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


@torch.fx.wrap
def resize_pos_embed_2d(pos: torch.Tensor, hw: List[int]) -> torch.Tensor:
    """(1, C, h, w) → (1, C, H, W) bilinear, align_corners=False; returned unchanged when the size matches (in
    eager mode; a captured graph always resamples, which at the same size gives the same values). A leaf under
    torch.fx, called with the traced sizes."""
    if not torch.jit.is_scripting():
        if not is_tracing() and tuple(pos.shape[-2:]) == tuple(hw):
            return pos
    return F.interpolate(pos.float(), size=(hw[0], hw[1]), mode="bilinear", align_corners=False).to(pos.dtype)


@torch.fx.wrap
def check_image_input(x: torch.Tensor, min_size: int, model: str) -> None:
    """Raise ValueError unless ``x`` is a batch of images (B, C, H, W) of at least ``min_size``² pixels (a leaf
    under torch.fx, so a traced model checks its input too)."""
    if x.dim() != 4:
        raise ValueError(f"{model}: expected images (B, C, H, W), got shape {list(x.shape)}")
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f"{model}: input {x.shape[-2]}x{x.shape[-1]} is too small; it needs at least {min_size}x{min_size} pixels"
        )


@torch.fx.wrap
def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout if it is a CPU map and the ``SOFA_CPU_CHANNELS_LAST`` switch is on (always on
    under TorchScript, which cannot read the switch); a leaf under torch.fx, so a traced model keeps the layout
    (and the strides of its outputs) of the eager one."""
    enabled = True
    if not torch.jit.is_scripting():
        enabled = switches.CPU_CHANNELS_LAST.get()
    if enabled and x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def take_indices(num_features: int, indices: Optional[Union[int, List[int]]] = None) -> Tuple[List[int], int]:
    """timm's ``indices`` convention: None takes every feature, an int n the last n, a list those (negative
    ones counted from the end). Returns the absolute indices and the largest."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_features})")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take: List[int] = []
        for i in indices:
            j = num_features + i if i < 0 else i
            if not 0 <= j < num_features:
                raise ValueError(f"feature index {i} is out of range (0 to {num_features - 1})")
            take.append(j)
    return take, max(take)


def build_token_mixer(spec: MixerSpec, dim: int) -> Tuple[nn.Module, bool]:
    """Mixer module for ``spec`` and whether it takes (B, N, C) tokens (False: it mixes (B, C, H, W) maps as they
    are, pooling and identity)."""
    from sofa.mixers import build_mixer

    if isinstance(spec, str):
        spec = {"kind": spec}
    spec = dict(spec)
    kind = spec.pop("kind")
    spec.pop("pos_embed", None)
    if kind in MAP_MIXERS:
        return build_mixer(kind, dim, **spec), False
    spec.setdefault("num_heads", max(1, dim // 32))  # heads of size 32 unless given
    return build_mixer(kind, dim, **spec), True


def _mixer_kind(spec: MixerSpec) -> str:
    return spec if isinstance(spec, str) else spec["kind"]


# ---------------------------------------------------------------------------------------------------- blocks
def present(t: Optional[torch.Tensor]) -> torch.Tensor:
    """``t``, which the block's layers always have (affine norms, convolutions with bias); typed for
    TorchScript."""
    assert t is not None
    return t


class MetaFormerBlock(nn.Module):
    """(B, C, H, W) block with GroupNorm(1): ``x + dp(ls1·mixer(norm1(x)))``, ``x + dp(ls2·mlp(norm2(x)))``.

    With pooling or identity as the mixer the forward is one op, :func:`sofa.ops.pool.metaformer_block`, which
    chooses among the fused CPU inference form, the folded form and the textbook form (same results to float
    rounding; under TorchScript the folded form in eval mode). With a token mixer the block runs the textbook
    form on its modules (:meth:`forward_plain`), the mixer seeing the map as (B, H·W, C) tokens.

    Args:
        impl: the op's ``impl`` ("auto", "fused_cpu", "folded" or "reference"); an attribute, so it can be set on
            a built model.
    """

    __constants__ = ["mixer_takes_tokens"]

    def __init__(
        self,
        dim: int,
        mixer: MixerSpec = "pool",
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: Optional[float] = 1e-5,
        norm_eps: float = 1e-5,
        impl: str = "auto",
    ):
        super().__init__()
        self.norm1 = GroupNorm1(dim, eps=norm_eps)
        self.token_mixer, self.mixer_takes_tokens = build_token_mixer(mixer, dim)
        self.norm2 = GroupNorm1(dim, eps=norm_eps)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        init = 1.0 if layer_scale_init_value is None else layer_scale_init_value
        self.layer_scale1 = nn.Parameter(torch.full((dim,), float(init)))
        self.layer_scale2 = nn.Parameter(torch.full((dim,), float(init)))
        self.impl = impl
        self.map_mixer = "pool" if isinstance(self.token_mixer, Pooling) else "identity"
        self.pool_size: int = getattr(self.token_mixer, "pool_size", 3)

    def mix_tokens(self, y: torch.Tensor) -> torch.Tensor:
        """The token mixer on a (B, C, H, W) map, seen as (B, H·W, C) tokens with ``hw=(H, W)``."""
        B, C, H, W = y.shape
        t = self.token_mixer(y.flatten(2).transpose(1, 2), hw=(H, W))
        return t.transpose(1, 2).reshape(B, C, H, W)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The textbook block on the block's modules (what ``impl="reference"`` computes)."""
        y = self.norm1(x)
        if self.mixer_takes_tokens:
            y = self.mix_tokens(y)
        else:
            y = self.token_mixer(y)
        x = x + self.drop_path(self.layer_scale1.view(-1, 1, 1) * y)
        return x + self.drop_path(self.layer_scale2.view(-1, 1, 1) * self.mlp(self.norm2(x)))

    def weights(self) -> BlockWeights:
        return BlockWeights(
            present(self.norm1.weight),
            present(self.norm1.bias),
            self.norm1.eps,
            self.layer_scale1,
            present(self.norm2.weight),
            present(self.norm2.bias),
            self.norm2.eps,
            self.layer_scale2,
            self.mlp.fc1.weight,
            present(self.mlp.fc1.bias),
            self.mlp.fc2.weight,
            present(self.mlp.fc2.bias),
        )

    def _op_arguments(self) -> Dict[str, Any]:
        return dict(
            mixer=self.mix_tokens if self.mixer_takes_tokens else self.map_mixer,
            pool_size=self.pool_size,
            drop=self.mlp.drop.p,
            drop_path=getattr(self.drop_path, "drop_prob", 0.0),
            training=self.training,
        )

    def chosen_impl(self, x: torch.Tensor) -> str:
        """The form :func:`sofa.ops.pool.metaformer_block` runs for ``x`` in the current grad mode."""
        if self.impl != "auto":
            return self.impl
        args = self._op_arguments()
        return choose_block_impl(x, args["mixer"], args["drop"], args["drop_path"], args["training"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer_takes_tokens:  # the op's reference form, on the modules (in their order under torch.fx)
            return self.forward_plain(x)
        if torch.jit.is_scripting():
            if self.impl == "reference" or self.training:  # dropout and stochastic depth by the modules
                return self.forward_plain(x)
            return metaformer_block_folded(x, self.weights(), self.map_mixer, self.pool_size)
        else:
            return self.forward_op(x)

    @torch.jit.unused
    def forward_op(self, x: torch.Tensor) -> torch.Tensor:
        """The block as :func:`sofa.ops.pool.metaformer_block` (eager, torch.fx, TorchDynamo)."""
        return metaformer_block(x, self.weights(), **self._op_arguments(), impl=self.impl)


class TokenBlock(nn.Module):
    """Pre-norm (B, N, C) block with LayerNorm and LayerScale; the mixer gets ``hw``."""

    def __init__(
        self,
        dim: int,
        mixer: MixerSpec,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: Optional[float] = 1e-5,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.token_mixer, self.mixer_takes_tokens = build_token_mixer(mixer, dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        init = 1.0 if layer_scale_init_value is None else layer_scale_init_value
        self.layer_scale1 = nn.Parameter(torch.full((dim,), float(init)))
        self.layer_scale2 = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale1 * self.token_mixer(self.norm1(x), hw=hw))
        x = x + self.drop_path(self.layer_scale2 * self.mlp(self.norm2(x)))
        return x


# ---------------------------------------------------------------------------------------------------- stems
class ConvStem(nn.Module):
    """PoolFormer's stem: one Conv2d(k, stride 4, padding) with no norm."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int = 7, stride: int = 4, padding: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size, stride, padding)

    def forward(self, x):
        return self.conv(x)


class Conv2Stem(nn.Module):
    """Two 3×3 stride-2 convolutions (stride 4): conv → LN → GELU → conv → LN (SeTformer's stem)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, 2, 1)
        self.norm1 = LayerNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, 2, 1)
        self.norm2 = LayerNorm2d(dim)

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class Downsample(nn.Module):
    """Conv2d(3×3, stride 2, padding 1), optionally followed by a LayerNorm over channels."""

    def __init__(
        self, in_dim: int, dim: int, norm: bool = False, kernel_size: int = 3, stride: int = 2, padding: int = 1
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, kernel_size, stride, padding)
        self.norm = LayerNorm2d(dim) if norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


# ---------------------------------------------------------------------------------------------------- stage
class MetaFormerStage(nn.Module):
    __constants__ = ["token_blocks"]

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        mixer: MixerSpec,
        mlp_ratio: float,
        dpr: Sequence[float],
        layer_scale_init_value: Optional[float],
        norm: str,
        downsample: bool,
        downsample_norm: bool,
        pos_embed_grid: Optional[Tuple[int, int]],
        drop: float = 0.0,
    ):
        super().__init__()
        self.downsample = Downsample(in_dim, dim, norm=downsample_norm) if downsample else nn.Identity()
        self.pos_embed = None
        if pos_embed_grid is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, dim, *pos_embed_grid))
            trunc_normal_(self.pos_embed, std=0.02)
        self.token_blocks = norm == "layernorm"
        block = TokenBlock if self.token_blocks else MetaFormerBlock
        self.blocks = nn.ModuleList(
            [block(dim, mixer, mlp_ratio, drop, dpr[i], layer_scale_init_value) for i in range(depth)]
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.pos_embed is not None:
            x = x + resize_pos_embed_2d(self.pos_embed, x.shape[-2:]).to(x.dtype)
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and torch.is_grad_enabled():
                return self.forward_checkpointed(x)
        B, C, H, W = x.shape
        if self.token_blocks:
            t = x.flatten(2).transpose(1, 2)
            for blk in self.blocks:
                t = blk(t, (H, W))
            return t.transpose(1, 2).reshape(B, C, H, W)
        for blk in self.blocks:
            x = blk(x)
        return x

    @torch.jit.unused
    def forward_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks under activation checkpointing (the downsampling and position embedding done)."""
        B, C, H, W = x.shape
        if self.token_blocks:
            t = x.flatten(2).transpose(1, 2)
            for blk in self.blocks:
                t = checkpoint(blk, t, (H, W), use_reentrant=False)
            return t.transpose(1, 2).reshape(B, C, H, W)
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False)
        return x


# ---------------------------------------------------------------------------------------------------- model
class MetaFormer(ClassifierMixin, nn.Module):
    """A four-stage MetaFormer with one token mixer per stage.

    Args:
        depths, dims: blocks and channels per stage.
        token_mixers: one spec per stage: ``"pool"``, ``"identity"``, or any kind of
            :func:`sofa.mixers.build_mixer` (``"soft"``, ``"soft_norm"``, ``"set"``, ``"attn"``), as a string or a
            dict ``{"kind": ..., **mixer_kwargs}`` (``num_heads`` defaults to dim / 32); a dict may carry
            ``"pos_embed": True`` for a learned absolute position embedding added at the start of the stage
            (stored for a 224² input, resized to any input).
        mlp_ratios: MLP hidden width / dim per stage.
        norm: ``"groupnorm"`` (PoolFormer: GroupNorm(1), (B, C, H, W) blocks) or ``"layernorm"`` (token blocks).
        stem: ``"poolformer"`` (Conv 7×7 s4 p2) or ``"conv2"`` (two 3×3 s2 convs with LayerNorm).
        downsample_norm: LayerNorm after each 3×3 s2 downsampling conv.
        layer_scale_init_value: initial LayerScale (None: 1, i.e. no scaling at init).
        out_norms: dense mode: a GroupNorm/LayerNorm on each stage output for ``forward_intermediates``; a sequence
            of four bools picks stages (released RetinaNet configs leave out the first).
        drop_rate, drop_path_rate: dropout in the MLP / head, and stochastic depth rising linearly over all blocks.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        token_mixers: Union[MixerSpec, Sequence[MixerSpec]] = "pool",
        mlp_ratios: Union[float, Sequence[float]] = 4.0,
        norm: str = "groupnorm",
        stem: str = "poolformer",
        downsample_norm: bool = False,
        layer_scale_init_value: Optional[float] = 1e-5,
        out_norms: Union[bool, Sequence[bool]] = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        img_size: Union[int, Tuple[int, int]] = 224,
    ):
        super().__init__()
        if norm not in ("groupnorm", "layernorm"):
            raise ValueError(f"norm must be 'groupnorm' or 'layernorm', got {norm!r}")
        n = len(depths)
        if len(dims) != n:
            raise ValueError(f"depths ({len(depths)}) and dims ({len(dims)}) need one entry per stage")
        mixers = [token_mixers] * n if isinstance(token_mixers, (str, dict)) else list(token_mixers)
        ratios = [mlp_ratios] * n if isinstance(mlp_ratios, (int, float)) else list(mlp_ratios)
        if len(mixers) != n or len(ratios) != n:
            raise ValueError(f"token_mixers and mlp_ratios need {n} entries, got {len(mixers)} and {len(ratios)}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.depths, self.dims, self.token_mixers = tuple(depths), tuple(dims), tuple(mixers)
        self.norm_kind = norm
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        self.stem = ConvStem(in_chans, dims[0]) if stem == "poolformer" else Conv2Stem(in_chans, dims[0])
        self.stem_kind = stem
        self.min_input_size = 3 if stem == "poolformer" else 1  # pixels the stem needs
        self.arch_name = type(self).__name__  # for error messages
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, cur = [], 0
        self.feature_info = []
        for i in range(n):
            stride = 4 * 2**i
            spec = mixers[i]
            grid = None
            if isinstance(spec, dict) and spec.get("pos_embed"):
                grid = (math.ceil(img_hw[0] / stride), math.ceil(img_hw[1] / stride))
            stages.append(
                MetaFormerStage(
                    dims[i - 1] if i else dims[0],
                    dims[i],
                    depths[i],
                    spec,
                    ratios[i],
                    dpr[cur : cur + depths[i]],
                    layer_scale_init_value,
                    norm,
                    downsample=i > 0,
                    downsample_norm=downsample_norm,
                    pos_embed_grid=grid,
                    drop=drop_rate,
                )
            )
            cur += depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=stride, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        norm2d = GroupNorm1 if norm == "groupnorm" else LayerNorm2d
        if isinstance(out_norms, bool):
            out_norms = [out_norms] * n
        self.out_norm_stages = tuple(bool(b) for b in out_norms)
        if any(self.out_norm_stages):
            self.out_norms = nn.ModuleList(
                [norm2d(d) if b else nn.Identity() for d, b in zip(dims, out_norms, strict=False)]
            )
        else:
            self.out_norms = None
        self.norm = norm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        for name, m in self.named_modules():
            if ".token_mixer" not in name:  # mixers initialise themselves
                self._init_weights(m)
        # the head last: the body's initial weights for a seed do not depend on the number of classes
        self._new_head(num_classes)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
            # PoolFormer: trunc-normal(0.02) Linear and MLP weights, zero biases; other convs keep PyTorch's init
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm conventions
    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if n.endswith("pos_embed")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            self.global_pool = global_pool
        self._new_head(num_classes)

    def _check_input(self, x: torch.Tensor):
        check_image_input(x, self.min_input_size, self.arch_name)

    def _to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """The layout the stages run in: channels-last on the CPU (the ``SOFA_CPU_CHANNELS_LAST`` switch), the
        input's elsewhere.

        On the CPU a 1×1 convolution on a channels-last map is one oneDNN GEMM at full vector width, while on an
        NCHW map oneDNN first reorders it to a blocked layout and back; GroupNorm, average pooling and the
        per-channel products all have channels-last CPU kernels, and a channels-last map is already (B, H·W, C)
        tokens for the token mixers. Outputs are the same maps (only their strides differ).
        """
        return cpu_channels_last(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → normalised final map (B, C, ⌈H/32⌉-ish, ...)."""
        self._check_input(x)
        x = self.stem(self._to_internal(x))
        for s in self.stages:
            x = s(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (B, C_i, H_i, W_i) at strides 4, 8, 16, 32 (through the dense output norms if present)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt} not supported: stage outputs are NCHW")
        take, max_index = take_indices(len(self.stages), indices)
        last = max_index if stop_early else len(self.stages) - 1
        self._check_input(x)
        x = self.stem(self._to_internal(x))
        outs: List[torch.Tensor] = []
        for i, s in enumerate(self.stages):
            if i <= last:
                x = s(x)
                outs.append(x)
        feats: List[torch.Tensor] = []
        if self.out_norms is not None:
            for i, out_norm in enumerate(self.out_norms):
                if i in take:
                    feats.append(out_norm(outs[i]))
        else:
            for i in range(len(outs)):
                if i in take:
                    feats.append(outs[i])
        if intermediates_only:
            return feats
        if last < len(self.stages) - 1:
            return x, feats
        return self.norm(x), feats

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ):
        take, max_index = take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if self.out_norms is not None:
            self.out_norms = self.out_norms[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take
