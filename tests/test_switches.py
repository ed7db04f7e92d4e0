"""sofa.switches: each switch read from its environment variable once, with a getter, setter and context manager;
docs/switches.md lists every one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sofa import switches


def test_a_switch_reads_its_environment_variable(monkeypatch):
    monkeypatch.setenv("SOFA_TEST_KIND", "Blas")
    assert switches.Switch("SOFA_TEST_KIND", "onednn", "", ("onednn", "blas")).get() == "blas"
    monkeypatch.setenv("SOFA_TEST_FLAG", "0")
    assert switches.Switch("SOFA_TEST_FLAG", True, "", parse=switches._flag).get() is False
    monkeypatch.setenv("SOFA_TEST_BYTES", "65536")
    assert switches.Switch("SOFA_TEST_BYTES", None, "", parse=switches._bytes).get() == 65536
    monkeypatch.delenv("SOFA_TEST_KIND")
    assert switches.Switch("SOFA_TEST_KIND", "onednn", "", ("onednn", "blas")).get() == "onednn"


def test_a_bad_environment_value_warns_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv("SOFA_TEST_KIND", "mkl")
    with pytest.warns(UserWarning, match="SOFA_TEST_KIND"):
        assert switches.Switch("SOFA_TEST_KIND", "onednn", "", ("onednn", "blas")).get() == "onednn"


def test_override_restores_the_value_even_after_an_error_and_set_checks_it():
    s = switches.CPU_MLP
    before = s.get()
    with pytest.raises(RuntimeError):
        with s.override("aten"):
            assert s.get() == "aten"
            raise RuntimeError
    assert s.get() == before
    with pytest.raises(ValueError, match="SOFA_CPU_MLP"):
        s.set("mkl")
    s.set("aten")
    try:
        assert s.get() == "aten"
    finally:
        s.set(before)


def test_the_flop_counter_turns_one_pass_on_and_off_again():
    from sofa.models.flops import flop_counter

    assert switches.ONE_PASS.get() is False
    with flop_counter():
        assert switches.ONE_PASS.get() is True
    assert switches.ONE_PASS.get() is False


def test_one_pass_makes_soft_attention_count_each_product_once():
    """Inside the switch SOFT runs its one-pass form without autograd: the kernel's GEMMs counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    from sofa.ops.soft import soft_kernel_attention

    q, L, v = torch.randn(1, 1, 600, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 600, 8)
    counts = []
    for on in (False, True):
        with torch.no_grad(), switches.ONE_PASS.override(on), FlopCounterMode(display=False) as c:
            soft_kernel_attention(q, L, v, block_rows=100)
        counts.append(c.get_total_flops())
    assert counts[1] < counts[0]  # the streamed form builds the kernel twice


def test_docs_list_every_switch():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "switches.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `SOFA_")}
    assert rows == set(switches.SWITCHES) | {"SOFA_KEEP_FREED_MEMORY"}
