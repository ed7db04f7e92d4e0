"""SOFT and SOFT-Norm vision transformers, exactly the released architecture (fudan-zvg/SOFT), see docs/methods/soft.md.

* Stem (stride 4): three Conv3×3+BN+ReLU (3→32 s2, 32→32 s1, 32→C₁ s2); downsampling to stages 2–4:
  Conv3×3 s2 + BN + ReLU.
* Stages 1–3: post-norm SOFT blocks, ``x ← LN(x + Drop(SOFT(x)))``, ``x ← LN(x + Drop(W₂·GELU_tanh(W₁x)))``,
  hidden width 4·C whatever ``mlp_ratios`` says, LayerNorm eps 1e-5; the released code uses the stochastic-depth
  rate of each block as a plain dropout rate here, and so does this model. Landmark stride r = 8, 4, 2 and
  depthwise kernel 9, 5, 3 in stages 1–3; the mixer is :class:`sofa.mixers.SoftAttention`.
* Stage 4: pre-norm ViT blocks, softmax attention over the tokens and a cls token (LayerNorm eps 1e-6, exact
  GELU, the configured MLP ratio, DropPath); :class:`sofa.mixers.SoftmaxAttention`.
* One learned absolute position embedding per stage, stored for the grid of ``img_size`` (56², 28², 14², 7²+cls
  at 224²) and bilinearly resized (align_corners=False) to the actual grid on every forward; the cls entry is not
  resized. Any input size works (a landmark grid smaller than its stride is zero-padded up to one landmark).
* Head: LayerNorm(eps 1e-6) → cls token → Linear.

``soft_small`` is the paper's 24M model (depths 1,3,7,4); the released code's 20-block Small (38.9M) is
``soft_small_released``, and a checkpoint of it given to ``soft_small`` is recognised by its 20 stage-3 blocks
(the depths are then taken from the checkpoint, with a warning).

SOFT-Norm (``soft_norm_*``): Newton α per image by default; ``batch_alpha=True`` takes it over the whole batch as
the released code does, which exact agreement with released SOFT-Norm outputs on a batch needs.
``max_landmarks=N`` bounds the landmarks of every SOFT stage (linear cost at any resolution; the released stride
mode, the default, grows the landmarks with the image).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from sofa.models._builder import build_model_with_checkpoint
from sofa.models.metaformer import ClassifierMixin, Mlp, take_indices
from sofa.models.registry import register_model
from sofa.ops.common import is_tracing

__all__ = ["SoftVisionTransformer", "VARIANTS", "checkpoint_filter_fn", "from_original_config"]

# ---------------------------------------------------------------------------------------------------- variants
#  name          dims                 heads            depths          paper: params(M) GMACs top-1 (-Norm top-1)
_D = (64, 128, 320, 512)
_H = (2, 4, 10, 16)
VARIANTS = {
    "tiny": dict(dims=_D, heads=_H, depths=(1, 2, 3, 2), params=13.07, macs=1.9, top1=79.3, norm_top1=79.4),
    "small": dict(dims=_D, heads=_H, depths=(1, 3, 7, 4), params=24.11, macs=3.3, top1=82.2, norm_top1=82.4),
    "medium": dict(
        dims=(64, 128, 288, 512),
        heads=(2, 4, 9, 16),
        depths=(1, 3, 29, 5),
        params=45.81,
        macs=7.2,
        top1=82.9,
        norm_top1=83.1,
    ),
    "large": dict(dims=_D, heads=_H, depths=(1, 3, 40, 5), params=64.70, macs=11.0, top1=83.1, norm_top1=83.3),
    "huge": dict(
        dims=(64, 128, 352, 512),
        heads=(2, 4, 11, 16),
        depths=(1, 5, 49, 5),
        params=87.11,
        macs=16.3,
        top1=83.3,
        norm_top1=83.4,
    ),
    # the released code's soft_small (depths 1,3,20,4), which contradicts the paper's 24M
    "small_released": dict(dims=_D, heads=_H, depths=(1, 3, 20, 4), params=38.9, note="released code's 20-block Small"),
    # not in the papers: the reference fixtures' configuration; small enough to train on a CPU
    "mini": dict(dims=(32, 64, 96, 128), heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), note="not in the paper"),
}
LANDMARK_STRIDES = (8, 4, 2)
DWCONV_KERNELS = (9, 5, 3)


# ---------------------------------------------------------------------------------------------------- blocks
class SoftBlock(nn.Module):
    """Post-norm SOFT block (stages 1–3): ``x ← LN(x + drop(attn(x)))``, ``x ← LN(x + drop(mlp(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        landmark_stride: int,
        dwconv_kernel: int,
        normalized: bool,
        drop: float = 0.0,
        mixer_kwargs: Optional[Dict] = None,
    ):
        super().__init__()
        from sofa.mixers import SoftAttention

        self.attn = SoftAttention(
            dim,
            num_heads,
            landmark_stride=landmark_stride,
            dwconv_kernel=dwconv_kernel,
            normalized=normalized,
            **(mixer_kwargs or {}),
        )
        self.drop1 = nn.Dropout(drop)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, 4 * dim, act_layer=lambda: nn.GELU(approximate="tanh"))
        self.drop2 = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attn(x, hw=hw)))
        return self.norm2(x + self.drop2(self.mlp(x)))


class ViTBlock(nn.Module):
    """Pre-norm softmax-attention block (stage 4), on the tokens and the cls token."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        sr_ratio: int = 1,
    ):
        super().__init__()
        from sofa.mixers import SoftmaxAttention

        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SoftmaxAttention(
            dim, num_heads, qkv_bias=True, sr_ratio=sr_ratio, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]


class SoftStage(nn.Module):
    """Downsampling (or the stem's output), the stage's position embedding, and its blocks, on tokens; the output
    tokens (cls token dropped) laid out as a (B, C, H, W) map pass through ``feature_map``, the module that
    ``feature_info`` names (forward hooks and the FX feature extractors take the map from it)."""

    def __init__(
        self,
        downsample: nn.Module,
        dim: int,
        grid: Tuple[int, int],
        blocks: List[nn.Module],
        cls_token: bool,
        drop: float,
    ):
        super().__init__()
        self.downsample = downsample
        self.grid = tuple(grid)
        self.has_cls = cls_token
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + int(cls_token), dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(blocks)
        self.feature_map = nn.Identity()
        self.grad_checkpointing = False

    def pos_for(self, hw: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The position embedding resized to an H×W grid (bilinear, align_corners=False), cls entry first.
        Under a graph capture it is always resampled (to its own grid that is an exact copy)."""
        pos = self.pos_embed
        n_cls = 1 if self.has_cls else 0
        grid = pos[:, n_cls:]
        if is_tracing() or hw != self.grid:
            g = grid.reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2).float()
            g = F.interpolate(g, size=hw, mode="bilinear", align_corners=False)
            grid = g.flatten(2).transpose(1, 2).to(pos.dtype)
        out = torch.cat([pos[:, :n_cls], grid], dim=1) if self.has_cls else grid
        return out.to(dtype)

    def forward(self, x: torch.Tensor, cls_token: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H', W') → tokens (B, [1 +] H·W, C) after the stage (cls token first), and the stage's
        (B, C, H, W) map (without the cls token)."""
        x = self.downsample(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        if cls_token is not None:
            t = torch.cat([cls_token.expand(B, -1, -1).to(t.dtype), t], dim=1)
        t = self.pos_drop(t + self.pos_for((H, W), t.dtype))
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            if torch.jit.is_scripting():
                t = blk(t, (H, W))
            else:
                t = checkpoint(blk, t, (H, W), use_reentrant=False) if use_ckpt else blk(t, (H, W))
        grid = t[:, 1:] if cls_token is not None else t
        return t, self.feature_map(grid.transpose(1, 2).reshape(B, C, H, W))


# ---------------------------------------------------------------------------------------------------- model
class SoftVisionTransformer(ClassifierMixin, nn.Module):
    """SOFT / SOFT-Norm (see the module docstring).

    Args:
        embed_dims, num_heads, depths: per stage (head size 32 in every released model).
        mlp_ratio: the MLP ratio of stage 4 (stages 1–3 always use 4, as released).
        landmark_strides, dwconv_kernels: per SOFT stage (released: 8, 4, 2 and 9, 5, 3).
        normalized: SOFT-Norm. batch_alpha: SOFT-Norm's batch-wide Newton α, as released (default per image).
        newton_iters: Newton–Schulz iterations (20). max_landmarks: bound on the landmarks (None: released).
        img_size: the input size the position embeddings are stored for (224; resized to any input).
        sr_ratio: spatial reduction of stage 4's attention (1, as released).
        drop_rate, attn_drop_rate, drop_path_rate: as released (the drop-path rate of a SOFT block is its dropout).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (2, 4, 10, 16),
        depths: Sequence[int] = (1, 2, 3, 2),
        mlp_ratio: float = 4.0,
        landmark_strides: Sequence[int] = LANDMARK_STRIDES,
        dwconv_kernels: Sequence[int] = DWCONV_KERNELS,
        normalized: bool = False,
        batch_alpha: bool = False,
        newton_iters: int = 20,
        max_landmarks: Optional[int] = None,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        sr_ratio: int = 1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
    ):
        super().__init__()
        if len(embed_dims) != 4 or len(num_heads) != 4 or len(depths) != 4:
            raise ValueError("SOFT has four stages: embed_dims, num_heads and depths need four entries each")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        self.global_pool = global_pool
        self.embed_dims, self.depths = tuple(embed_dims), tuple(depths)
        self.normalized = normalized
        H0, W0 = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        mixer_kwargs = dict(newton_iters=newton_iters, max_landmarks=max_landmarks)
        if normalized:
            mixer_kwargs["batch_alpha"] = batch_alpha
        elif batch_alpha:
            raise ValueError("batch_alpha applies to SOFT-Norm only (the soft_norm_* models)")

        self.stem = nn.Sequential(
            *_conv_bn_relu(in_chans, 32, 2), *_conv_bn_relu(32, 32, 1), *_conv_bn_relu(32, embed_dims[0], 2)
        )
        stages, cur = [], 0
        self.feature_info = []
        for i in range(4):
            stride = 4 * 2**i
            grid = (math.ceil(H0 / stride), math.ceil(W0 / stride))
            if i < 3:
                blocks = [
                    SoftBlock(
                        embed_dims[i],
                        num_heads[i],
                        landmark_strides[i],
                        dwconv_kernels[i],
                        normalized,
                        drop=dpr[cur + j],
                        mixer_kwargs=mixer_kwargs,
                    )
                    for j in range(depths[i])
                ]
            else:
                blocks = [
                    ViTBlock(
                        embed_dims[i],
                        num_heads[i],
                        mlp_ratio,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=dpr[cur + j],
                        sr_ratio=sr_ratio,
                    )
                    for j in range(depths[i])
                ]
            down = nn.Identity() if i == 0 else nn.Sequential(*_conv_bn_relu(embed_dims[i - 1], embed_dims[i], 2))
            stages.append(SoftStage(down, embed_dims[i], grid, blocks, cls_token=i == 3, drop=drop_rate))
            cur += depths[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f"stages.{i}.feature_map"))
        self.stages = nn.ModuleList(stages)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[3]))
        self.norm = nn.LayerNorm(embed_dims[3], eps=1e-6)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Identity()  # made after the other weights: they come out the same with or without a head

        for s in self.stages:
            trunc_normal_(s.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._new_head(num_classes)

    # ------------------------------------------------------------------ timm conventions
    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_token"} | {f"stages.{i}.pos_embed" for i in range(len(self.stages))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(
            stem=r"^cls_token|^stem|^stages\.0\.(downsample|pos_embed)",
            blocks=[(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^stages\.(\d+)", (0,)), (r"^norm", (99999,))],
        )

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self._new_head(num_classes)

    def _check_input(self, x: torch.Tensor):
        if torch.jit.is_scripting():
            torch._assert(x.dim() == 4, "SoftVisionTransformer: expected images (B, C, H, W)")
            return
        if is_tracing():
            torch._assert(x.dim() == 4, "SoftVisionTransformer: expected images (B, C, H, W)")
        elif x.dim() != 4:
            raise ValueError(f"{type(self).__name__}: expected images (B, C, H, W), got shape {tuple(x.shape)}")

    def _run(self, x: torch.Tensor, take: List[int], stop: int = 3) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stages 0..stop → (last tokens, stage maps in ``take`` as (B, C, H, W))."""
        self._check_input(x)
        x = self.stem(x)
        feats: List[torch.Tensor] = []
        t = x
        for i, s in enumerate(self.stages):
            if i <= stop:
                t, x = s(x, self.cls_token if s.has_cls else None)
                if i in take:
                    feats.append(x)
        return t, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → the final tokens (B, 1 + H/32·W/32, C) after the last LayerNorm, cls token first."""
        t, _ = self._run(x, [])
        return self.norm(t)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)
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
        """Stage outputs as (B, C_i, H_i, W_i) maps at strides 4, 8, 16, 32 (stage 4 without its cls token;
        through the final LayerNorm with ``norm=True``)."""
        if output_fmt != "NCHW":
            raise ValueError("output_fmt " + output_fmt + " not supported: stage outputs are NCHW")
        take, max_index = take_indices(len(self.stages), indices)
        stop = max_index if (stop_early or intermediates_only) else len(self.stages) - 1
        t, feats = self._run(x, take, stop)
        if norm and 3 in take:
            last = feats[-1]
            feats[-1] = self.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if intermediates_only:
            return feats
        return self.norm(t), feats

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ):
        take, max_index = take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


# ---------------------------------------------------------------------------------------------------- checkpoints
MIXER_KEYS = {
    "att.mha.W_q.": "attn.q.",
    "att.mha.W_v.": "attn.v.",
    "att.mha.attn.Qlandmark_op.": "attn.landmark.",
    "att.mha.attn.Qnorm_act.0.": "attn.landmark_norm.",
    "att.mha.attn.conv.": "attn.dwconv.",
    "att.mha.ff.": "attn.proj.",
    "att.norm1.": "norm1.",
    "att.norm2.": "norm2.",
    "att.ff1.": "mlp.fc1.",
    "att.ff2.": "mlp.fc2.",
}


def is_original(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("patch_embed1.", "block1.", "pos_embed1")) for k in state)


def checkpoint_filter_fn(state: Dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """Released SOFT keys → sofa's (sofa's own keys pass through unchanged).

    ``patch_embed1.proj.*`` → ``stem.*``; ``patch_embed{k}.proj.*`` → ``stages.{k-1}.downsample.*``;
    ``pos_embed{k}`` → ``stages.{k-1}.pos_embed``; ``block{k}.{j}.att.mha.{W_q, W_v, attn.Qlandmark_op,
    attn.Qnorm_act.0, attn.conv, ff}`` → ``stages.{k-1}.blocks.{j}.attn.{q, v, landmark, landmark_norm, dwconv,
    proj}``, ``att.{norm1, ff1, ff2, norm2}`` → ``{norm1, mlp.fc1, mlp.fc2, norm2}``; ``block4.{j}.*`` →
    ``stages.3.blocks.{j}.*`` (same names); ``cls_token``, ``norm``, ``head`` unchanged. Given the model, position
    embeddings stored for another grid are resampled (bilinear) to the model's.
    """
    if is_original(state):
        out = {}
        for k, v in state.items():
            nk = k
            m = re.match(r"patch_embed(\d)\.proj\.(.*)", k)
            if m:
                s = int(m.group(1)) - 1
                nk = f"stem.{m.group(2)}" if s == 0 else f"stages.{s}.downsample.{m.group(2)}"
            elif m := re.match(r"pos_embed(\d)$", k):
                nk = f"stages.{int(m.group(1)) - 1}.pos_embed"
            elif m := re.match(r"block(\d)\.(\d+)\.(.*)", k):
                s, j, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
                for a, b in MIXER_KEYS.items():
                    if rest.startswith(a):
                        rest = b + rest[len(a) :]
                        break
                nk = f"stages.{s}.blocks.{j}.{rest}"
            out[nk] = v
        state = out
    if model is not None:
        own = model.state_dict()
        for i, stage in enumerate(getattr(model, "stages", [])):
            k = f"stages.{i}.pos_embed"
            if (
                k in state
                and k in own
                and state[k].dim() == 3
                and state[k].shape[-1] == own[k].shape[-1]
                and state[k].shape[1] != own[k].shape[1]
            ):
                state[k] = _resample_pos(state[k], stage.has_cls, stage.grid)
    return state


def _resample_pos(pos: torch.Tensor, has_cls: bool, grid: Tuple[int, int]) -> torch.Tensor:
    cls, g = (pos[:, :1], pos[:, 1:]) if has_cls else (None, pos)
    n = g.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot resample a position embedding of {n} tokens (not a square grid)")
    g = g.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2).to(pos.dtype)
    warnings.warn(f"position embedding resampled from {side}x{side} to {grid[0]}x{grid[1]}", stacklevel=4)
    return g if cls is None else torch.cat([cls, g], 1)


def checkpoint_depths(state: Dict[str, torch.Tensor]) -> Tuple[int, ...]:
    """Blocks per stage in a (sofa-layout) state dict."""
    depths = [0, 0, 0, 0]
    for k in state:
        m = re.match(r"stages\.(\d)\.blocks\.(\d+)\.", k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            depths[s] = max(depths[s], j + 1)
    return tuple(depths)


def _infer_kwargs(name: str, state: Dict, kwargs: Dict, user_keys: set) -> Dict:
    """The released 20-block Small given to ``soft_small`` / ``soft_norm_small``: build its depths."""
    if "depths" in user_keys or name not in ("soft_small", "soft_norm_small"):
        return kwargs
    found = checkpoint_depths(state)
    if found == VARIANTS["small_released"]["depths"]:
        warnings.warn(
            f"{name}: the checkpoint is the released code's 20-block Small; building depths {found} "
            f"(= {name.replace('small', 'small_released')})",
            stacklevel=4,
        )
        kwargs = dict(kwargs, depths=found)
    return kwargs


def from_original_config(config: Dict, normalized: bool = False, **kwargs) -> SoftVisionTransformer:
    """A model from the released constructor's arguments (``embed_dims``, ``num_heads``, ``depths``,
    ``mlp_ratios``, ``sr_ratios``, ``num_classes``), e.g. the reference fixtures' configs."""
    sr = config.get("sr_ratios", (8, 4, 2, 1))
    args = dict(
        embed_dims=config["embed_dims"],
        num_heads=config["num_heads"],
        depths=config["depths"],
        mlp_ratio=config.get("mlp_ratios", (8, 8, 4, 4))[3],
        landmark_strides=tuple(sr[:3]),
        sr_ratio=sr[3],
        num_classes=config.get("num_classes", 1000),
        normalized=normalized,
    )
    args.update(kwargs)
    return SoftVisionTransformer(**args)


# ---------------------------------------------------------------------------------------------------- entry points
def _cfg() -> Dict:
    return dict(
        input_size=(3, 224, 224),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.0",
        classifier="head",
        num_classes=1000,
        paper_ids=("arXiv:2110.11945", "arXiv:2207.03341"),
        origin_url="https://github.com/fudan-zvg/SOFT",
    )


def _paper(variant: str, normalized: bool) -> Dict:
    """The papers' numbers of a :data:`VARIANTS` entry (SOFT-Norm's top-1 for ``normalized``)."""
    v = VARIANTS[variant]
    paper = {k: v[k] for k in ("params", "macs", "note") if k in v}
    top1 = v.get("norm_top1" if normalized else "top1")
    if top1 is not None:
        paper["top1"] = top1
    return paper


def _create_soft(name: str, variant: str, normalized: bool, pretrained: bool, **kwargs) -> SoftVisionTransformer:
    """Model ``name``: the :data:`VARIANTS` entry ``variant`` (SOFT-Norm if ``normalized``); ``kwargs`` override
    its architecture and carry the build's options (``checkpoint_path``, ``features_only``, ...)."""
    v = VARIANTS[variant]
    args = dict(embed_dims=v["dims"], num_heads=v["heads"], depths=v["depths"], normalized=normalized)
    args.update(kwargs)
    return build_model_with_checkpoint(
        SoftVisionTransformer,
        name,
        _cfg(),
        pretrained=pretrained,
        filter_fn=checkpoint_filter_fn,
        infer_kwargs=_infer_kwargs,
        user_keys=set(kwargs),
        **args,
    )


@register_model("soft", _cfg(), _paper("tiny", normalized=False))
def soft_tiny(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_tiny", "tiny", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("tiny", normalized=True))
def soft_norm_tiny(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_tiny", "tiny", True, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("small", normalized=False))
def soft_small(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_small", "small", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("small", normalized=True))
def soft_norm_small(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_small", "small", True, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("medium", normalized=False))
def soft_medium(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_medium", "medium", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("medium", normalized=True))
def soft_norm_medium(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_medium", "medium", True, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("large", normalized=False))
def soft_large(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_large", "large", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("large", normalized=True))
def soft_norm_large(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_large", "large", True, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("huge", normalized=False))
def soft_huge(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_huge", "huge", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("huge", normalized=True))
def soft_norm_huge(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_huge", "huge", True, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("small_released", normalized=False))
def soft_small_released(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_small_released", "small_released", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("small_released", normalized=True))
def soft_norm_small_released(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_small_released", "small_released", True, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("mini", normalized=False))
def soft_mini(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_mini", "mini", False, pretrained, **kwargs)


@register_model("soft", _cfg(), _paper("mini", normalized=True))
def soft_norm_mini(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create_soft("soft_norm_mini", "mini", True, pretrained, **kwargs)
