"""Shared test fixtures.

The original projects' outputs live in ``../shared/reference`` beside the clone (override with the
``SOFA_REFERENCE`` environment variable). Tests that need them skip, saying why, where they are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("SOFA_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "index.json").is_file():
        pytest.skip(f"reference outputs not found at {REFERENCE_DIR} (set SOFA_REFERENCE to their folder)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_index(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "index.json").read_text())


@pytest.fixture(autouse=True)
def _seed_and_global_state():
    """Every test starts seeded, and must leave torch's global switches as it found them."""
    torch.manual_seed(0)
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    leaked = torch.is_grad_enabled() != grad
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    assert not leaked, "the test left autograd switched off globally"
