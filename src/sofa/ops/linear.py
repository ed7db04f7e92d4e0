"""``y = x·Wᵀ + b`` through oneDNN where that is faster than the BLAS (float32 on the CPU, many rows).

PyTorch's x86 wheels send ``F.linear`` to MKL, which on AMD CPUs runs its AVX2 code (half the vector width of
AVX-512), while oneDNN, which runs every convolution, uses AVX-512 on any CPU that has it. The GEMM is the same:
``y = x·Wᵀ + b`` is a 1×1 convolution of the (M, K) rows seen, without a copy, as a channels-last (1, K, M, 1)
map (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sofa import switches
from sofa.ops.common import check_impl, is_tracing, needs_graph
from sofa.ops.numerics import LINEAR_MIN_ROWS

__all__ = ["linear", "linear_gelu", "rows_as_map", "choose_impl", "choose_gelu_impl", "IMPLS", "GELU_IMPLS"]

IMPLS = ("onednn", "blas")
#: the forms of :func:`linear_gelu`: one oneDNN GEMM with the GELU applied as it writes its result, or the plain
#: :func:`linear` then ``F.gelu``
GELU_IMPLS = ("onednn_fused", "plain")


def rows_as_map(rows: torch.Tensor) -> torch.Tensor:
    """The rows of an (M, K) matrix as a (1, K, M, 1) channels-last map with the canonical channels-last strides
    (what convolutions check for): the input a 1×1 convolution reads as a GEMM of the rows against its weights.
    A view of contiguous rows (writes to it land in ``rows``); other rows are copied."""
    M, K = rows.shape
    return rows.reshape(1, M, 1, K).permute(0, 3, 1, 2)


def choose_impl(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The ``impl="auto"`` rule: "onednn" for float32 CPU inputs of at least ``LINEAR_MIN_ROWS`` rows outside
    autocast and graph captures (:func:`sofa.ops.common.is_tracing`), where oneDNN exists and the
    ``SOFA_CPU_LINEAR`` switch allows it; else "blas"."""
    if is_tracing():
        return "blas"
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    if (
        switches.CPU_LINEAR.get() == "onednn"
        and torch.backends.mkldnn.is_available()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and M >= LINEAR_MIN_ROWS
        and not torch.is_autocast_enabled("cpu")
    ):
        return "onednn"
    return "blas"


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, impl: str = "auto"
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., K), weight (N, K), bias (N,) → (..., N).

    ``impl``: "auto" (:func:`choose_impl`), "onednn" (a 1×1 convolution; float32 CPU inputs) or "blas"
    (``F.linear``)."""
    check_impl("linear", impl, IMPLS)
    if impl == "auto":
        impl = choose_impl(x, weight)
    if impl == "blas":
        return F.linear(x, weight, bias)
    if not needs_graph(x, weight, bias) and not switches.ONE_PASS.get() and fused_gelu_ready():
        # oneDNN's own entry point: F.conv2d sends a 1×1 convolution of a one-image batch to oneDNN only when torch
        # runs more than one thread (with one thread it takes the im2col path, ~3× slower here); FLOP counters
        # (which turn SOFA_ONE_PASS on) see the convolution instead
        return _fused(x, weight, bias, "", "none")
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    y = F.conv2d(rows_as_map(x.reshape(M, K)), weight.view(weight.shape[0], K, 1, 1), bias)  # (1, N, M, 1)
    return y[0, :, :, 0].t().reshape(*x.shape[:-1], weight.shape[0])


@functools.lru_cache(maxsize=None)
def fused_gelu_ready() -> bool:
    """Whether oneDNN's 1×1 convolution entry point with post-ops exists in this build and agrees with ``F.linear``
    and with ``F.gelu`` of it, for both GELU forms, on a small case (checked once per process)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(37, 8, generator=g), torch.randn(24, 8, generator=g), torch.randn(24, generator=g)
        with torch.no_grad():
            for approximate in ("none", "tanh"):
                want = F.gelu(F.linear(x, w, b), approximate=approximate)
                if not torch.allclose(_fused(x, w, b, approximate), want, rtol=1e-5, atol=1e-5):
                    return False
            if not torch.allclose(_fused(x, w, b, "", "none"), F.linear(x, w, b), rtol=1e-5, atol=1e-5):
                return False
        return True
    except Exception:  # no such kernel in this build, or it refuses these shapes
        return False


def _fused(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str, attr: str = "gelu"
) -> torch.Tensor:
    """``x·Wᵀ + b`` as one oneDNN 1×1 convolution of the rows, with the post-op ``attr`` ("gelu" of the form
    ``approximate``, or "none"), whatever torch's thread count."""
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    y = torch.ops.mkldnn._convolution_pointwise.default(
        rows_as_map(x.reshape(M, K)),
        weight.view(weight.shape[0], K, 1, 1),
        bias,
        [0, 0],
        [1, 1],
        [1, 1],
        1,
        attr,
        [],
        approximate,
    )  # (1, N, M, 1), channels-last: the rows (M, N) contiguous
    return y[0, :, :, 0].t().reshape(*x.shape[:-1], weight.shape[0])


def choose_gelu_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> str:
    """The ``impl="auto"`` rule of :func:`linear_gelu`: "onednn_fused" where :func:`choose_impl` picks oneDNN,
    autograd records no graph, the ``SOFA_ONE_PASS`` switch is off (FLOP counters turn it on: they see the plain
    GEMM, not the fused kernel) and the fused kernel works here (:func:`fused_gelu_ready`); else "plain"."""
    if choose_impl(x, weight) != "onednn" or needs_graph(x, weight, bias) or switches.ONE_PASS.get():
        return "plain"
    return "onednn_fused" if fused_gelu_ready() else "plain"


def linear_gelu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    approximate: str = "none",
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate=approximate)``: x (..., K), weight (N, K), bias (N,) →
    (..., N).

    ``impl``: "auto" (:func:`choose_gelu_impl`), "onednn_fused" (one oneDNN GEMM whose GELU is applied as the
    result is written: no second pass over the (..., N) activations and no second buffer; float32 CPU inputs,
    no autograd) or "plain" (:func:`linear`, then ``F.gelu``: the reference)."""
    check_impl("linear_gelu", impl, GELU_IMPLS)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"linear_gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if impl == "auto":
        impl = choose_gelu_impl(x, weight, bias)
    if impl == "plain":
        return F.gelu(linear(x, weight, bias), approximate=approximate)
    if needs_graph(x, weight, bias):
        raise ValueError("linear_gelu: impl='onednn_fused' is for inference only (no autograd)")
    return _fused(x, weight, bias, approximate)
