"""Layers shared by the mixers and the models.

:class:`Linear` is ``nn.Linear`` (same parameters, state-dict keys, initialisation and ``isinstance``) whose
forward is :func:`sofa.ops.linear.linear`: float32 CPU inputs of many rows run through oneDNN instead of the
BLAS (the ``SOFA_CPU_LINEAR`` switch, docs/switches.md); anything else, and anything under TorchScript, is plain
``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sofa.ops.linear import linear, rows_as_map

__all__ = ["Linear", "linear", "rows_as_map"]


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`sofa.ops.linear.linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.linear(x, self.weight, self.bias)
        else:
            return linear(x, self.weight, self.bias)
