"""The MetaFormer block with GroupNorm(1) and a pooling or identity mixer (PoolFormer), in three forms that
compute the same numbers to float rounding (docs/methods/poolformer.md):

* ``"reference"``: the textbook block (:mod:`.reference`); the only form for a block with any other mixer.
* ``"folded"``: the GroupNorm affines and the LayerScales folded into per-channel factors and into the 1×1 MLP
  weights, which saves four full passes over the activations per block (these models are limited by memory
  traffic, not FLOPs). Pooling is linear, per-channel and keeps constants (count_include_pad=False), so
  ``pool(γ·n + β) − (γ·n + β) = γ·(pool(n) − n)`` for the normalised n: the mixer branch is
  ``(ls1·γ1)·(pool(n) − n)`` (identity: ``ls1·(γ1·n + β1)``), added with one ``addcmul``; and
  ``fc1(γ2·n + β2) = (W1·diag γ2)·n + (b1 + W1·β2)``, ``ls2·fc2(h) = (diag ls2·W2)·h + ls2·b2``. The weights are
  folded on every call (cheap: they are C×4C), so training sees the same gradients.
* ``"fused_cpu"`` (inference on the CPU: no autograd, float32, channels-last): the mixer half from GroupNorm's
  statistics alone, the MLP half as one fused, chunked, in-place operator
  (:func:`sofa.ops.fused_mlp.metaformer_mlp_`). Under ``torch.compile`` with ``impl="fused_cpu"`` that operator
  stays one kernel and inductor fuses the rest ("auto" takes the plain forms under any graph capture).

:func:`choose_impl` writes the ``"auto"`` rule.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import drop_path as _drop_path

from sofa import switches
from sofa.ops.common import check_impl, is_tracing
from sofa.ops.fused_mlp import fold_mlp_weights, metaformer_mlp_, mlp_chunk_bytes, sample_moments
from sofa.ops.pool.pooling import pool_minus_input
from sofa.ops.pool.reference import metaformer_block_reference

IMPLS = ("fused_cpu", "folded", "reference")
Mixer = Union[str, Callable[[torch.Tensor], torch.Tensor]]


class BlockWeights(NamedTuple):
    """The parameters of one block: GroupNorm affines (C,) and eps, LayerScales (C,), and the 1×1 MLP weights
    fc1 (4C, C, 1, 1), (4C,) and fc2 (C, 4C, 1, 1), (C,)."""

    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    norm1_eps: float
    layer_scale1: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor
    norm2_eps: float
    layer_scale2: torch.Tensor
    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor
    fc2_weight: torch.Tensor
    fc2_bias: torch.Tensor


def choose_impl(
    x: torch.Tensor, mixer: Mixer = "pool", drop: float = 0.0, drop_path: float = 0.0, training: bool = False
) -> str:
    """The ``impl="auto"`` rule.

    "reference" for a mixer other than pooling or identity. "fused_cpu" without autograd for a channels-last
    float32 CPU map with no active dropout, outside graph captures (:func:`sofa.ops.common.is_tracing`), unless
    the ``SOFA_ONE_PASS`` switch is on (the FLOP counter, which must see the MLP's products). Otherwise "folded",
    except under ``torch.compile`` (inductor fuses the textbook form itself, and the folded form compiled to
    slower code) or with active MLP dropout: then "reference"."""
    if not isinstance(mixer, str):
        return "reference"
    plain = "folded" if (drop == 0.0 or not training) and not torch.compiler.is_compiling() else "reference"
    if is_tracing():
        return plain
    active_drop = training and (drop > 0.0 or drop_path > 0.0)
    if (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not active_drop
        and not switches.ONE_PASS.get()
    ):
        return "fused_cpu"
    return plain


def metaformer_block(
    x: torch.Tensor,
    w: BlockWeights,
    mixer: Mixer = "pool",
    *,
    pool_size: int = 3,
    drop: float = 0.0,
    drop_path: float = 0.0,
    training: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """``x + DropPath(ls1 · mixer(GN1(x)))``, then ``x + DropPath(ls2 · fc2(Dropout(GELU(fc1(GN2(x))))))``.

    Args:
        x: (B, C, H, W).
        w: the block's :class:`BlockWeights`.
        mixer: "pool" (AvgPool(pool_size) − input), "identity", or a function (B, C, H, W) → (B, C, H, W)
            (then only the reference form runs).
        drop, drop_path: the MLP's dropout and the stochastic depth rate, active when ``training``.
        impl: "auto" (:func:`choose_impl`), "fused_cpu", "folded" or "reference" (see the module docstring).

    Returns:
        (B, C, H, W); "fused_cpu" returns a channels-last map.
    """
    check_impl("metaformer_block", impl, IMPLS)
    if impl == "auto":
        impl = choose_impl(x, mixer, drop, drop_path, training)
    if impl != "reference" and not isinstance(mixer, str):
        raise ValueError(f"metaformer_block: impl={impl!r} needs mixer 'pool' or 'identity'")
    if impl == "fused_cpu":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *w[:2], *w[3:6], *w[7:])):
            raise ValueError("metaformer_block: impl='fused_cpu' is for inference only (no autograd)")
        return _fused_cpu(x, w, mixer, pool_size)
    if impl == "folded":
        return metaformer_block_folded(x, w, mixer, pool_size, drop_path, training)
    return metaformer_block_reference(x, w, mixer, pool_size, drop, drop_path, training)


def metaformer_block_folded(
    x: torch.Tensor, w: BlockWeights, mixer: str, pool_size: int = 3, drop_path: float = 0.0, training: bool = False
) -> torch.Tensor:
    """The ``"folded"`` form (mixer "pool" or "identity"): GroupNorm without affine, the affines and LayerScales
    folded into per-channel factors and into the MLP weights (autograd runs through it; the MLP's dropout must be
    inactive). TorchScript compiles it."""
    n = F.group_norm(x, 1, None, None, w.norm1_eps)
    s1 = (w.layer_scale1 * w.norm1_weight).to(x.dtype).view(-1, 1, 1)
    shift: Optional[torch.Tensor] = None
    if mixer == "pool":
        branch = pool_minus_input(n, pool_size)
    else:  # identity: ls1·(γ1·n + β1)
        branch, shift = n, (w.layer_scale1 * w.norm1_bias).to(x.dtype).view(-1, 1, 1)
    if drop_path == 0.0:
        x = torch.addcmul(x if shift is None else x + shift, s1, branch)
    else:
        x = x + _drop_path(s1 * branch if shift is None else s1 * branch + shift, drop_path, training)
    n = F.group_norm(x, 1, None, None, w.norm2_eps)
    w1, b1, w2, b2 = fold_mlp_weights(
        w.fc1_weight, w.fc1_bias, w.norm2_weight, w.norm2_bias, w.layer_scale2, w.fc2_weight, w.fc2_bias
    )
    if shift is None:  # β1 cancels under pooling; keep it in the graph (gradient exactly 0, as DDP expects)
        b1 = b1 + 0.0 * w.norm1_bias.sum()
    h = F.conv2d(F.gelu(F.conv2d(n, w1, b1)), w2, b2)
    return x + (h if drop_path == 0.0 else _drop_path(h, drop_path, training))


def _fused_cpu(x: torch.Tensor, w: BlockWeights, mixer: str, pool_size: int) -> torch.Tensor:
    """Inference on the CPU. The mixer half from GroupNorm(1)'s statistics (μ, σ²) and r = (σ² + ε)^-½: pooling
    keeps constants (count_include_pad=False), so ``pool(γ·n + β) − (γ·n + β) = γ·r·(pool(x) − x)`` and the
    branch is one ``addcmul`` of x with (ls1·γ1·r)·(pool(x) − x) (identity: ``x + ls1·(γ1·r·(x − μ) + β1)``).
    The MLP half is :func:`sofa.ops.fused_mlp.metaformer_mlp_`, in place on the mixer's output."""
    mean, var = sample_moments(x)
    coef = (w.layer_scale1 * w.norm1_weight).view(1, -1, 1, 1) * torch.rsqrt(var + w.norm1_eps).view(-1, 1, 1, 1)
    if mixer == "pool":
        x = torch.addcmul(x, pool_minus_input(x, pool_size), coef)
    else:  # identity
        shift = (w.layer_scale1 * w.norm1_bias).view(1, -1, 1, 1) - coef * mean.view(-1, 1, 1, 1)
        x = torch.addcmul(x + shift, x, coef)
    x = x.contiguous(memory_format=torch.channels_last)
    mean2, var2 = sample_moments(x)
    metaformer_mlp_(
        x,
        mean2,
        torch.rsqrt(var2 + w.norm2_eps),
        w.fc1_weight,
        w.fc1_bias,
        w.norm2_weight,
        w.norm2_bias,
        w.layer_scale2,
        w.fc2_weight,
        w.fc2_bias,
        mlp_chunk_bytes(),
    )
    return x
