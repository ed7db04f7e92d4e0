"""Helpers every op shares: dtype and autocast handling, the autograd test, the ``impl=`` check, and whether a
graph capture is running."""

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


def needs_graph(*ts) -> bool:
    """Whether autograd records a graph through any of the tensors ``ts`` (None entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def check_impl(op: str, impl: str, impls) -> None:
    if impl != "auto" and impl not in impls:
        raise ValueError(f"{op}: impl must be 'auto' or one of {tuple(impls)}, got {impl!r}")


def is_tracing() -> bool:
    """Whether forward runs under a graph capture: TorchScript scripting or tracing, torch.fx symbolic tracing,
    or TorchDynamo (``torch.compile``, ``torch.export``, the ONNX exporter). The ``"auto"`` rule of every op picks
    its plain graph form then: the CPU fast paths call oneDNN directly, branch on values, or write in place, which
    a captured graph cannot hold."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    return torch.compiler.is_compiling() or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
