"""Layers shared by the mixers and the models.

:class:`Linear` is ``nn.Linear`` (same parameters, state-dict keys, initialisation and ``isinstance``) whose
float32 CPU forward on many rows runs through oneDNN instead of the BLAS. PyTorch's x86 wheels send
``F.linear`` to MKL, which on AMD CPUs runs its AVX2 code (half the vector width of AVX-512), while oneDNN, which
runs every convolution, uses AVX-512 on any CPU that has it. The GEMM is the same: ``y = x·Wᵀ + b`` is a 1×1
convolution of the (M, K) rows seen, without a copy, as a channels-last (1, K, M, 1) map. Measured on this
project's 2-core AMD EPYC machine (docs/benchmarks.md), the oneDNN route is 1.75–2.2× faster for the
projection and MLP shapes of these models (M ≥ 1,568 rows, K and N from 64 to 2,048).

The route is taken for float32 inputs on the CPU, outside autocast, with at least ``MIN_ROWS`` rows; anything
else (other dtypes and devices, autocast, few rows) is plain ``F.linear``. ``SOFA_CPU_LINEAR=blas`` in the
environment turns the route off (e.g. to compare, or on a CPU where the BLAS is the faster).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "linear", "rows_as_map", "MIN_ROWS"]

#: fewer rows than this run through ``F.linear`` (the convolution's fixed cost is not worth it)
MIN_ROWS = 256


def _onednn_enabled() -> bool:
    return os.environ.get("SOFA_CPU_LINEAR", "onednn").lower() != "blas" and torch.backends.mkldnn.is_available()


_ENABLED = _onednn_enabled()


def rows_as_map(rows: torch.Tensor) -> torch.Tensor:
    """The rows of an (M, K) matrix as a (1, K, M, 1) channels-last map with the canonical channels-last strides
    (what convolutions check for): the input a 1×1 convolution reads as a GEMM of the rows against its weights.
    A view of contiguous rows (writes to it land in ``rows``); other rows are copied."""
    M, K = rows.shape
    return rows.reshape(1, M, 1, K).permute(0, 3, 1, 2)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where that is faster (see the module docstring)."""
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    if (not _ENABLED or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or M < MIN_ROWS or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()):
        return F.linear(x, weight, bias)
    y = F.conv2d(rows_as_map(x.reshape(M, K)), weight.view(weight.shape[0], K, 1, 1), bias)  # (1, N, M, 1)
    return y[0, :, :, 0].t().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
