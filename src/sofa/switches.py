"""Every process-wide switch of sofa, in one place (docs/switches.md lists them).

Each switch is read from its environment variable once, when this module is imported, and has a public getter,
setter and context manager::

    from sofa import switches

    switches.CPU_LINEAR.get()                    # "onednn" or "blas"
    switches.CPU_LINEAR.set("blas")              # for the rest of the process
    with switches.CPU_LINEAR.override("blas"):   # for a block of code
        ...

The switches choose among implementations that compute the same numbers (to float rounding) or tune how they
run (block sizes); they never change a model's arithmetic. An op with several implementations also takes a
keyword-only ``impl=``, whose ``"auto"`` rule (a ``choose_impl`` function next to the op) reads these switches.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

__all__ = [
    "Switch",
    "SWITCHES",
    "CPU_LINEAR",
    "CPU_MLP",
    "CPU_CHANNELS_LAST",
    "ONE_PASS",
    "SOFT_CHUNK_BYTES",
    "SET_CHUNK_BYTES",
    "MLP_CHUNK_BYTES",
]


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 0/1 (or true/false), got {text!r}")


def _bytes(text: str) -> Optional[int]:
    value = int(text.strip()) if text.strip() else 0
    if value < 0:
        raise ValueError(f"expected a number of bytes ≥ 0, got {text!r}")
    return value or None


class Switch:
    """One process-wide setting: ``get()``, ``set(value)`` and ``override(value)`` (a context manager).

    Args:
        env: the environment variable read once at import (unset or empty: ``default``).
        default: the value when the variable is unset.
        doc: one line for the table in docs/switches.md.
        choices: the allowed values of a string switch (None: any value ``parse`` accepts).
        parse: turns the variable's text into a value (strings are lower-cased and checked against ``choices``).
    """

    def __init__(
        self,
        env: str,
        default: Any,
        doc: str,
        choices: Optional[Sequence[str]] = None,
        parse: Optional[Callable[[str], Any]] = None,
    ):
        self.env, self.default, self.doc, self.choices = env, default, doc, tuple(choices) if choices else None
        self._parse = parse
        self._value = self._from_environment()

    def _check(self, value: Any) -> Any:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.env}: expected one of {self.choices}, got {value!r}")
        return value

    def _from_environment(self) -> Any:
        text = os.environ.get(self.env, "")
        if not text.strip():
            return self.default
        try:
            return self._check(self._parse(text) if self._parse else text.strip().lower())
        except ValueError as e:
            warnings.warn(f"ignoring {self.env}={text!r} ({e}); using {self.default!r}", stacklevel=3)
            return self.default

    def get(self) -> Any:
        return self._value

    def set(self, value: Any) -> None:
        self._value = self._check(value)

    @contextlib.contextmanager
    def override(self, value: Any) -> Iterator[None]:
        """Within the ``with`` block the switch is ``value``; it is restored afterwards (also on an error)."""
        old = self._value
        self.set(value)
        try:
            yield
        finally:
            self._value = old

    def __repr__(self) -> str:
        return f"Switch({self.env}={self._value!r})"


CPU_LINEAR = Switch(
    "SOFA_CPU_LINEAR",
    "onednn",
    choices=("onednn", "blas"),
    doc="float32 CPU linear layers on many rows (sofa.ops.linear): 'onednn' runs them as 1×1 convolutions "
    "through oneDNN, 'blas' as F.linear (the BLAS)",
)
CPU_MLP = Switch(
    "SOFA_CPU_MLP",
    "onednn",
    choices=("onednn", "aten"),
    doc="kernels of the fused MetaFormer MLP operator (sofa.ops.fused_mlp): 'onednn' fused post-ops and "
    "prepacked weights where the build has them, 'aten' plain F.conv2d and F.gelu",
)
CPU_CHANNELS_LAST = Switch(
    "SOFA_CPU_CHANNELS_LAST",
    True,
    parse=_flag,
    doc="MetaFormer models run their stages in channels-last layout on the CPU (0: keep the input's layout)",
)
ONE_PASS = Switch(
    "SOFA_ONE_PASS",
    False,
    parse=_flag,
    doc="every op runs its one-pass form, each product of the algorithm once (what MAC counts report; "
    "sofa.models.flops turns it on inside its counter) instead of the streamed and fused inference paths",
)
SOFT_CHUNK_BYTES = Switch(
    "SOFA_SOFT_CHUNK_BYTES",
    None,
    parse=_bytes,
    doc="bytes of SOFT's kernel block on its streamed path (unset: sofa.ops.numerics.SOFT_CHUNK_BYTES)",
)
SET_CHUNK_BYTES = Switch(
    "SOFA_SET_CHUNK_BYTES",
    None,
    parse=_bytes,
    doc="bytes of one block of SeT's (n, m) matrices (unset: sofa.ops.numerics.SET_CHUNK_BYTES)",
)
MLP_CHUNK_BYTES = Switch(
    "SOFA_MLP_CHUNK_BYTES",
    None,
    parse=_bytes,
    doc="hidden-activation bytes per chunk of the fused MetaFormer MLP (unset: sofa.ops.numerics.MLP_CHUNK_BYTES)",
)

#: every switch by its environment variable (docs/switches.md has one row each)
SWITCHES: Dict[str, Switch] = {
    s.env: s
    for s in (CPU_LINEAR, CPU_MLP, CPU_CHANNELS_LAST, ONE_PASS, SOFT_CHUNK_BYTES, SET_CHUNK_BYTES, MLP_CHUNK_BYTES)
}
