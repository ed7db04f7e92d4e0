from __future__ import annotations

import contextlib
import contextvars

import torch

_ONE_PASS = contextvars.ContextVar("sofa_one_pass", default=False)


@contextlib.contextmanager
def one_pass():
    """Within it the streamed inference path that rebuilds blocks to stay in the cache (SOFT's kernel K1) runs
    its one-pass form: each product of the algorithm once, which is what MAC counts report
    (``sofa.models.flops``). The results are the same to float rounding."""
    token = _ONE_PASS.set(True)
    try:
        yield
    finally:
        _ONE_PASS.reset(token)


def one_pass_active() -> bool:
    # torch.compile cannot trace ContextVar.get (a graph break); the counter never runs compiled code
    return not torch.compiler.is_compiling() and _ONE_PASS.get()


def token_spans(n: int, row_bytes: int, chunk_bytes: int, min_rows: int = 256) -> list:
    """[(i, j), ...] blocks of the n tokens of an (..., n, ·) temporary whose rows take ``row_bytes`` each (all
    batch and head dimensions together): about ``chunk_bytes`` per block, at least ``min_rows`` rows (one block
    when the whole temporary fits)."""
    rows = max(min_rows, chunk_bytes // max(1, row_bytes))
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


def fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 (float64 is kept: the slow references and gradchecks run in it)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def no_autocast(t: torch.Tensor):
    """A context that turns autocast off on ``t``'s device, so kernels and iterations stay in fp32."""
    device_type = t.device.type
    if device_type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
