"""The MetaFormer MLP for CPU inference, fused: ``x += ls2 · fc2(GELU(fc1(GroupNorm(x))))`` in place, over token
chunks.

PoolFormer spends most of its time in the two 1×1 convolutions of each block's MLP (GEMMs of the tokens against
C×4C weights). How fast those GEMMs run on a CPU depends on what surrounds them:

* **Chunks.** The hidden activation is 4× the map (25 MB per image batch at stage 1 of poolformer_s12 with 8
  images at 224²). Run over the whole map it streams through main memory twice, and glibc serves a block that
  large by ``mmap``, so it is page-faulted in afresh on every call. Over chunks of ``chunk_bytes`` (a few MB) of
  hidden activation it stays in the cache: the normalisation, fc1, GELU, fc2 and the residual add of one chunk all
  run on cache-resident data.
* **oneDNN with fused post-ops and prepacked weights.** fc1 runs with GELU as a oneDNN post-op and fc2 adds its
  result into the residual map in place (a oneDNN "binary add" post-op), so neither the GELU nor the residual add
  is a separate pass. The weights, with GroupNorm's affine folded into fc1 and LayerScale into fc2, are reordered
  once into oneDNN's blocked layout for the chunk's shape and cached (per fc1 weight, dropped with it, rebuilt
  whenever any of the seven tensors changes in place or is replaced), instead of being reordered on every call.
* **The norm without a normalised copy.** GroupNorm(1) needs each sample's mean and variance over (C, H, W); the
  caller passes them in (:func:`sample_moments`), and each chunk is normalised into a cache-sized buffer just
  before its GEMM.

Two kernel sets run the same chunk loop (``impl=``): "onednn", the fused kernels above
(``torch.ops.mkldnn._convolution_pointwise``, in PyTorch builds with oneDNN; checked once against plain
convolutions), and "aten", ``F.conv2d`` and ``F.gelu``. :func:`choose_impl` writes the "auto" rule.

Exposed as the custom operator ``torch.ops.sofa.metaformer_mlp_`` so that ``torch.compile`` calls it as one opaque
kernel and fuses the element-wise work around it.
"""

from __future__ import annotations

import functools
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from sofa import switches
from sofa.ops import numerics
from sofa.ops.common import check_impl
from sofa.ops.linear import rows_as_map

__all__ = [
    "metaformer_mlp_",
    "fold_mlp_weights",
    "sample_moments",
    "chunk_rows",
    "onednn_ready",
    "choose_impl",
    "packed_weights",
    "onednn_chunk_",
    "mlp_chunk_bytes",
    "IMPLS",
    "MOMENT_PARTS",
]

IMPLS = ("onednn", "aten")

#: packed weights kept per block for this many distinct chunk lengths (each distinct input size adds one or two)
_PACKS_PER_BLOCK = 8

_CL = torch.channels_last
_1x1 = ([0, 0], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups of a 1×1 convolution


def _onednn_ops():
    m = torch.ops.mkldnn
    return m._convolution_pointwise.default, m._convolution_pointwise_.binary


def _reorder(w: torch.Tensor, rows: int) -> torch.Tensor:
    """``w`` (O, I, 1, 1) in oneDNN's blocked layout for a (1, I, rows, 1) channels-last input."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), *_1x1[:3], _1x1[3], [1, w.shape[1], rows, 1])


def onednn_chunk_(rows: torch.Tensor, n: torch.Tensor, w1, b1, w2, b2) -> None:
    """``rows += fc2(GELU(fc1(n)))`` for one chunk of tokens ((c, C) matrices, rows contiguous) through oneDNN,
    with weights reordered by :func:`_reorder` for c rows: fc1 with GELU as a post-op, fc2 adding into ``rows`` in
    place."""
    conv, conv_add_ = _onednn_ops()
    h = conv(rows_as_map(n), w1, b1, *_1x1, "gelu", [], "none")
    conv_add_(rows_as_map(rows), h, w2, b2, *_1x1, "add", 1.0, None, [], None)


@functools.lru_cache(maxsize=None)
def onednn_ready() -> bool:
    """Whether the fused oneDNN kernels exist here and agree with plain convolutions on a small case (once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, res = torch.randn(37, 8, generator=g), torch.randn(37, 8, generator=g)  # 37 tokens of 8 channels
        w1, b1 = torch.randn(24, 8, 1, 1, generator=g), torch.randn(24, generator=g)
        w2, b2 = torch.randn(8, 24, 1, 1, generator=g), torch.randn(8, generator=g)
        want = res + F.linear(F.gelu(F.linear(x, w1.flatten(1), b1)), w2.flatten(1), b2)
        with torch.no_grad():
            got = res.clone()
            onednn_chunk_(got, x, _reorder(w1, 37), b1, _reorder(w2, 37), b2)
        return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))
    except Exception:  # no such kernels in this build, or they refuse these shapes
        return False


_PACKED: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def fold_mlp_weights(fc1_w, fc1_b, norm_w, norm_b, ls, fc2_w, fc2_b):
    """GroupNorm's affine folded into fc1 and LayerScale into fc2: fc1(γ·n + β) = (W1·diag γ)·n + (b1 + W1·β),
    ls·fc2(h) = (diag ls·W2)·h + ls·b2."""
    w1 = fc1_w * norm_w.view(1, -1, 1, 1)
    b1 = fc1_b + fc1_w.flatten(1) @ norm_b
    return w1, b1, fc2_w * ls.view(-1, 1, 1, 1), fc2_b * ls


def packed_weights(tensors: Tuple[torch.Tensor, ...], rows: int, pack: bool):
    """Folded (and, with ``pack``, reordered) weights for chunks of ``rows`` tokens, cached per fc1 weight.

    The cache keeps only what the chunks use: the reordered weights per chunk length with ``pack`` (the folded
    ones are rebuilt for a new length, a cheap C×4C product), the folded ones without."""
    try:  # identity, storage and in-place version of every tensor the fold reads
        sig = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
    except RuntimeError:  # inference tensors carry no version counter: fold anew, cache nothing
        sig = None
    entry = _PACKED.get(tensors[0]) if sig is not None else None
    if entry is None or entry[0] != sig:
        entry = (sig, {})
        if sig is not None:
            _PACKED[tensors[0]] = entry
    cache = entry[1]
    key = rows if pack else None
    got = cache.get(key)
    if got is None:
        if len(cache) >= _PACKS_PER_BLOCK:
            cache.pop(next(iter(cache)))
        w1, b1, w2, b2 = fold_mlp_weights(*tensors)
        got = cache[key] = (_reorder(w1, rows), b1, _reorder(w2, rows), b2) if pack else (w1, b1, w2, b2)
    return got


def chunk_rows(tokens: int, hidden: int, element_size: int, chunk_bytes: int) -> int:
    """Tokens per chunk: ``tokens`` split into equal chunks whose hidden activation is at most ``chunk_bytes``
    (at least 64 tokens per chunk, or all of them). A chunk count up to twice the fewest that divides the tokens
    exactly is preferred (one chunk length: one packed copy of the weights, which oneDNN lays out per length);
    otherwise the last chunk is shorter (two lengths)."""
    target = max(64, chunk_bytes // max(1, hidden * element_size))
    n = -(-tokens // target)
    for k in range(n, 2 * n + 1):
        if tokens % k == 0 and (tokens // k >= 64 or k == 1):
            return tokens // k
    return -(-tokens // n)


#: a sample's values are summed in up to this many equal parts (a power of two), then the parts are added
MOMENT_PARTS = 64


def sample_moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and (biased) variance of ``x`` over all its other dimensions, in float32, as
    ``F.group_norm(x, 1)`` uses them: mean first, then the mean square about it (no cancellation; several times
    faster on the CPU than ``torch.var_mean``, whose Welford loop does not vectorise).

    Each sample is summed in ``MOMENT_PARTS`` equal parts (the largest power of two up to it that divides its size)
    and the parts added: one parallel reduction over all (sample, part) rows. Compiled, this is faster than one
    reduction per sample, which inductor runs as a serial loop over samples of parallel reductions (a thread
    fork and join each); eager it is as fast, and its rounding error is smaller."""
    B = x.shape[0]
    t = x.permute(0, 2, 3, 1) if x.dim() == 4 and x.is_contiguous(memory_format=_CL) else x
    n = t[0].numel()
    parts = min(MOMENT_PARTS, n & -n)  # the largest power of two dividing n, at most MOMENT_PARTS
    t = t.reshape(B, parts, n // parts).float()
    m = t.sum(-1).sum(-1) / n
    d = t - m.view(B, 1, 1)
    return m, torch.linalg.vecdot(d, d).sum(-1) / n


def mlp_chunk_bytes() -> int:
    """Hidden-activation bytes per chunk: the ``SOFA_MLP_CHUNK_BYTES`` switch, or ``numerics.MLP_CHUNK_BYTES``."""
    return switches.MLP_CHUNK_BYTES.get() or numerics.MLP_CHUNK_BYTES


def choose_impl() -> str:
    """The ``impl="auto"`` rule: "onednn" where the fused kernels work here (:func:`onednn_ready`), the
    ``SOFA_CPU_MLP`` switch allows them and autocast is off; "aten" otherwise."""
    if switches.CPU_MLP.get() == "onednn" and onednn_ready() and not torch.is_autocast_enabled("cpu"):
        return "onednn"
    return "aten"


@torch.library.custom_op("sofa::metaformer_mlp_", mutates_args=("x",))
def metaformer_mlp_(
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor,
    norm_w: torch.Tensor,
    norm_b: torch.Tensor,
    ls: torch.Tensor,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor,
    chunk_bytes: int,
    impl: str = "auto",
) -> None:
    """``x += ls · fc2(GELU(fc1(γ·(x − mean)·rstd + β)))`` in place, inference only (no autograd).

    Args:
        x: (B, C, H, W) channels-last float32 map on the CPU.
        mean, rstd: (B,) the per-sample GroupNorm(1) statistics of ``x`` (rstd = (σ² + ε)^−½).
        fc1_w (4C, C, 1, 1), fc1_b (4C,), norm_w (C,), norm_b (C,) (GroupNorm's affine γ, β), ls (C,),
        fc2_w (C, 4C, 1, 1), fc2_b (C,).
        chunk_bytes: hidden-activation bytes per chunk of tokens (:func:`mlp_chunk_bytes` gives the default).
        impl: "auto" (:func:`choose_impl`), "onednn" or "aten".
    """
    check_impl("metaformer_mlp_", impl, IMPLS)
    if impl == "onednn" and not onednn_ready():
        raise ValueError("metaformer_mlp_: impl='onednn' needs oneDNN's fused kernels, which this build lacks")
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous(memory_format=_CL):
        raise ValueError(
            "metaformer_mlp_: needs a channels-last float32 CPU map, got "
            f"{x.dtype} on {x.device} with strides {x.stride()}"
        )
    B, C, H, W = x.shape
    HW, L = H * W, B * H * W
    hidden = fc1_w.shape[0]
    fused = (choose_impl() if impl == "auto" else impl) == "onednn"
    rows_per = chunk_rows(L, hidden, 4, chunk_bytes)
    tokens = x.permute(0, 2, 3, 1).view(L, C)  # token-major rows of the map (a view: writes land in x)
    tok_rstd = rstd.float().repeat_interleave(HW).view(L, 1)
    tok_shift = (-mean.float() * rstd.float()).repeat_interleave(HW).view(L, 1)
    params = (fc1_w, fc1_b, norm_w, norm_b, ls, fc2_w, fc2_b)
    packs = {}
    for i in range(0, L, rows_per):
        j = min(L, i + rows_per)
        if j - i not in packs:
            packs[j - i] = packed_weights(params, j - i, fused)
        w1, b1, w2, b2 = packs[j - i]
        rows = tokens[i:j]
        n = torch.addcmul(tok_shift[i:j], rows, tok_rstd[i:j])  # γ, β are folded into w1, b1
        if fused:
            onednn_chunk_(rows, n, w1, b1, w2, b2)
        else:
            y = F.conv2d(F.gelu(F.conv2d(rows_as_map(n), w1, b1)), w2, b2)
            rows.add_(y[0, :, :, 0].t())


@metaformer_mlp_.register_fake
def _(x, mean, rstd, fc1_w, fc1_b, norm_w, norm_b, ls, fc2_w, fc2_b, chunk_bytes, impl="auto"):
    return None
