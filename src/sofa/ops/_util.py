from __future__ import annotations

import contextlib

import torch


def fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 (float64 is kept: the slow references and gradchecks run in it)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def no_autocast(t: torch.Tensor):
    """A context that turns autocast off on ``t``'s device, so kernels and iterations stay in fp32."""
    device_type = t.device.type
    if device_type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
