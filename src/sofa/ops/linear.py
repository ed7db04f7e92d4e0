"""``y = x·Wᵀ + b`` through oneDNN where that is faster than the BLAS (float32 on the CPU, many rows).

PyTorch's x86 wheels send ``F.linear`` to MKL, which on AMD CPUs runs its AVX2 code (half the vector width of
AVX-512), while oneDNN, which runs every convolution, uses AVX-512 on any CPU that has it. The GEMM is the same:
``y = x·Wᵀ + b`` is a 1×1 convolution of the (M, K) rows seen, without a copy, as a channels-last (1, K, M, 1)
map (docs/benchmarks.md has the measurements).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sofa import switches
from sofa.ops.common import check_impl, is_tracing
from sofa.ops.numerics import LINEAR_MIN_ROWS

__all__ = ["linear", "rows_as_map", "choose_impl", "IMPLS"]

IMPLS = ("onednn", "blas")


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
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    y = F.conv2d(rows_as_map(x.reshape(M, K)), weight.view(weight.shape[0], K, 1, 1), bias)  # (1, N, M, 1)
    return y[0, :, :, 0].t().reshape(*x.shape[:-1], weight.shape[0])
