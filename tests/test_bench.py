"""The benchmark harness itself (sofa.bench): fields, slopes, skipping, memory method, plots. No timed assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sofa.bench import measure, memory, report
from sofa.bench.mixers import bench_mixers, slope, slopes
from sofa.cli import main


def _rec(mixer, side, t, mode="inference", **kw):
    return dict(bench="mixers", mixer=mixer, mode=mode, side=side, N=side * side, status="ok", median_s=t, **kw)


def test_slope_of_synthetic_timings():
    assert slope(100, 1.0, 400, 4.0) == pytest.approx(1.0)
    assert slope(100, 1.0, 400, 16.0) == pytest.approx(2.0)
    assert slope(100, 1.0, 100, 2.0) is None and slope(100, 0.0, 400, 1.0) is None
    recs = [
        _rec("a", 56, 1.0),
        _rec("a", 112, 4.4),
        _rec("a", 224, 16.0),
        _rec("b", 56, 1.0),
        _rec("b", 112, 16.0),
        dict(_rec("b", 224, 0.0), status="skipped"),
    ]
    sl = {(s["mixer"], s["from_side"], s["to_side"]): s["slope"] for s in slopes(recs)}
    assert sl[("a", 56, 112)] == pytest.approx(math.log(4.4) / math.log(4))
    assert sl[("b", 56, 112)] == pytest.approx(2.0)
    assert ("b", 112, 224) not in sl  # a skipped size gives no slope


def test_goals_on_synthetic_records():
    recs = [
        _rec("sdpa", 56, 1.0),
        _rec("sdpa", 224, 100.0),
        _rec("soft_bounded", 56, 0.2),
        _rec("soft_bounded", 112, 0.3),
        _rec("soft_bounded", 224, 1.5, flush_ratio=1.3),
        _rec("set", 224, 1.0),
    ]
    goals = {g["goal"]: g for g in report.mixer_goals(recs)}
    speed = next(g for k, g in goals.items() if k.startswith("soft_bounded") and "224" in k)
    assert speed["value"] == pytest.approx(100 / 1.5, rel=1e-2) and speed["met"]
    slope_goal = next(g for k, g in goals.items() if k.startswith("slope soft_bounded"))
    assert not slope_goal["met"]  # 0.3 → 1.5 s for 4× the tokens is a slope of 1.16
    flush = next(g for k, g in goals.items() if k.startswith("flush"))
    assert not flush["met"]


def _seq(mixer, n, t, mode="inference"):
    return dict(bench="mixers", layout="sequence", mixer=mixer, mode=mode, side=None, N=n, status="ok", median_s=t)


def test_sequence_goals_on_synthetic_records():
    recs = [_seq("sdpa", 65536, 50.0), _seq("soft", 65536, 0.4), _seq("set", 65536, 0.6)]
    recs += [_seq("soft", 1024, 0.01), _seq("nystrom", 1024, 0.02), _seq("nystrom", 65536, 0.3)]
    recs += [dict(bench="mixer_pair", status="ok", layout="sequence", mixer="soft", mode="inference",
                  from_N=16384, to_N=65536, slope=1.12)]  # fmt: skip
    goals = {g["goal"]: g for g in report.mixer_goals(recs)}
    soft, set_ = goals["soft ≥ 100× faster than SDPA at 65,536 tokens (inference)"], None
    set_ = goals["set ≥ 100× faster than SDPA at 65,536 tokens (inference)"]
    assert soft["value"] == pytest.approx(125.0) and soft["met"]
    assert set_["value"] == pytest.approx(83.3) and not set_["met"]
    peer = goals["soft faster than nystrom-attention at every length (inference)"]
    assert not peer["met"] and peer["value"].startswith("0.75× at 65,536")  # 2× faster at 1,024 does not count
    assert not goals["slope soft 16,384→65,536 tokens (inference, interleaved runs) ≤ 1.1"]["met"]
    assert not any("(train)" in g for g in goals)  # nothing measured in training mode: no training goal


def test_peak_memory_sees_a_temporary_allocation():
    if not memory.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    size = 64 * 2**20

    def f():
        t = torch.ones(size // 4)  # 64 MiB, written so that it is resident
        return float(t[-1])

    r = memory.peak_memory(f)
    assert 0.9 * size <= r["peak_mem_bytes"] <= 1.5 * size + 16 * 2**20, r
    assert memory.peak_memory(lambda: None)["peak_mem_bytes"] < 8 * 2**20


def test_time_call_and_interleaved_record_every_run():
    t = measure.time_call(lambda: None, repeats=3, warmup=1)
    assert t["runs"] == 3 and len(t["times_s"]) == 3 and t["median_s"] >= 0
    t = measure.time_interleaved({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=0)
    assert set(t) == {"a", "b"} and t["a"]["runs"] == 2


def test_quick_mixer_run_writes_json_and_plot(tmp_path):
    js, png, md = tmp_path / "m.json", tmp_path / "m.png", tmp_path / "m.md"
    code = main(
        [
            "bench",
            "mixers",
            "--quick",
            "--mixers",
            "pool,soft_bounded,set,sdpa",
            "--sizes",
            "8,16",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
            str(js),
            "--plot",
            str(png),
            "--markdown",
            str(md),
        ]
    )
    assert code == 0
    payload = json.loads(js.read_text())
    assert {"command", "settings", "machine", "records", "slopes", "goals"} <= set(payload)
    assert payload["machine"]["torch"] == torch.__version__
    recs = [r for r in payload["records"] if r["bench"] == "mixers"]
    assert len(recs) == 4 * 2 * 2  # cases × sizes × modes
    pairs = [r for r in payload["records"] if r["bench"] == "mixer_pair"]
    # the linear mixers are timed again at successive sizes in turn, for slopes robust to the machine's load
    assert {(r["mixer"], r["mode"]) for r in pairs} == {
        (m, mode) for m in ("pool", "soft_bounded", "set") for mode in ("inference", "train")
    }
    assert all(r["status"] == "ok" and len(r["slope_runs"]) == r["runs"] >= 3 for r in pairs)
    assert payload["interleaved_slopes"] == pairs
    for r in recs:
        assert r["status"] == "ok", r
        assert {
            "mixer",
            "mode",
            "N",
            "side",
            "C",
            "heads",
            "dtype",
            "median_s",
            "times_s",
            "runs",
            "peak_mem_bytes",
            "mem_method",
        } <= set(r)
        # subnormal flushing on / off is compared in both modes, as the median of interleaved pairs
        assert r["flush_ratio"] > 0 and r["flush_on"]["runs"] == r["runs"] >= 1
        assert r["N"] == r["side"] ** 2 and r["median_s"] > 0
    soft = [r for r in recs if r["mixer"] == "soft_bounded"]
    assert all(r["landmarks"] >= 1 for r in soft)
    assert {(s["mixer"], s["mode"]) for s in payload["slopes"]} >= {("pool", "inference"), ("set", "train")}
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| soft_bounded |" in md.read_text()


def test_sizes_that_cannot_fit_are_skipped_with_the_reason():
    recs = bench_mixers(
        ["softmax_materialized"], [224], ["inference"], repeats=1, isolate=False, mem_limit=24e9, log=lambda s: None
    )
    assert recs[0]["status"] == "skipped" and "would need" in recs[0]["reason"]


def test_worker_runs_a_case_in_a_fresh_process():
    from sofa.bench.isolation import run_isolated

    r = run_isolated(
        "mixer",
        {"name": "pool", "side": 8, "mode": "inference", "repeats": 1, "threads": 1, "flush_compare": False},
        timeout=120,
    )
    assert r["runs"] == 1 and r["median_s"] > 0 and "fresh process" in r["mem_method"]


def test_quick_model_run_against_timm(tmp_path):
    js = tmp_path / "models.json"
    code = main(
        [
            "bench",
            "models",
            "--quick",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--json",
            str(js),
            "--plot",
            str(tmp_path / "models.png"),
        ]
    )
    assert code == 0
    payload = json.loads(js.read_text())
    gemm = [r for r in payload["records"] if r["bench"] == "gemm"]
    assert len(gemm) == 1 and gemm[0]["flops_per_s"] > 0
    models = [r for r in payload["records"] if r["bench"] == "models"]
    assert {(r["source"], r["model"]) for r in models} == {("sofa", "poolformer_mini"), ("timm", "resnet18")}
    for r in models:
        assert r["status"] == "ok", r
        assert r["images_per_s"] > 0 and r["flops"] > 0 and r["fraction_of_matmul_peak"] > 0
        assert r["batch"] == 2 and r["side"] == 32
    assert (tmp_path / "models.png").read_bytes()[:4] == b"\x89PNG"


def test_interleaved_runs_alternate_their_order_and_pair_abba():
    """A B, B A, A B, ...: a run right after another is often faster, so the order alternates and the ratios
    are taken over ABBA blocks, which cancels a drift of the machine's speed as well."""
    from sofa.bench.measure import paired_ratios, time_interleaved

    calls = []
    time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=0)
    assert "".join(calls) == "abbaabba"
    # in bursts, each turn runs its variant three times (the last one timed): no timed run follows the other
    calls.clear()
    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=0, burst=3)
    assert "".join(calls) == "aaabbbbbbaaa" and t["a"]["runs"] == 2
    # B is 2× A while the machine slows down steadily (×1.1 per run): each block still says 2
    a, b = [1.0 * 1.1**0, 1.0 * 1.1**3], [2.0 * 1.1**1, 2.0 * 1.1**2]
    ratio = paired_ratios(a, b)[0]
    assert ratio == pytest.approx(2.0, rel=0.01)  # the first pair alone would say 2.2


def test_interleaved_fill_gives_cheap_cases_more_rounds_within_the_budget():
    """fill_s: short runs get many more rounds than ``repeats`` (whole ABBA blocks, capped), and a budget still
    bounds them."""
    import time

    from sofa.bench.measure import time_interleaved

    fast = {"a": lambda: None, "b": lambda: None}
    t = time_interleaved(fast, repeats=4, warmup=1, fill_s=0.05, max_repeats=41)
    assert t["a"]["runs"] == t["b"]["runs"] == 42  # capped at 41, rounded up to whole blocks
    assert time_interleaved(fast, repeats=4, warmup=1)["a"]["runs"] == 4  # no fill: as asked
    slow = {"a": lambda: time.sleep(0.01), "b": lambda: time.sleep(0.01)}
    t = time_interleaved(slow, repeats=4, warmup=1, fill_s=10.0, max_repeats=400, budget_s=0.2)
    assert 4 <= t["a"]["runs"] <= 12  # the budget (about 10 rounds of 20 ms) wins over the fill


def test_poolformer_pair_is_timed_in_turn_with_the_same_weights():
    """The speed-up goal's measurement: ours and timm's port in one process, timed A B B A, ours given timm's
    weights first, so that the stage maps can be compared (they agree), and the goal reads the pair."""
    from sofa.bench.models import run_pair
    from sofa.bench.report import model_goals

    pytest.importorskip("timm")
    rec = run_pair(
        {
            "models": ["poolformer_s12", "timm:poolformer_s12"],
            "side": 32,
            "batch": 2,
            "repeats": 4,
            "warmup": 1,
            "threads": 1,
        }
    )
    assert rec["runs"] == 2 and len(rec["speedup_runs"]) == 2 and rec["speedup"] > 0
    assert rec["max_rel_diff"] is not None and rec["max_rel_diff"] < 1e-5
    goals = model_goals([dict(rec, bench="model_pair", status="ok", side=32, dtype="fp32", compile=False)])
    assert len(goals) == 1 and "timed in turn" in goals[0]["goal"] and goals[0]["met"] == (rec["speedup"] >= 1.2)
    from sofa.ops.fused_mlp import onednn_ready

    if onednn_ready():  # the floor of ours (its oneDNN work alone) is timed in the same turns
        assert len(rec["bound_speedup_runs"]) == 2 and rec["bound_speedup"] > 0 and rec["bound_images_per_s"] > 0
        assert "oneDNN GEMMs and convolutions alone" in goals[0]["value"]


def test_onednn_work_runs_every_gemm_chunk_and_convolution_of_the_model(monkeypatch):
    """The floor timed beside the pair: each block's fc1 (GELU) and fc2 (residual add) once per chunk of the
    fused operator, and the stem and downsampling convolutions; None where the model does not take that path."""
    from sofa.bench.models import onednn_work
    from sofa.models import create_model
    from sofa.ops import fused_mlp as fm

    if not fm.onednn_ready():
        pytest.skip("this PyTorch build has no oneDNN fused convolution kernels")
    calls = {"chunk": 0, "conv": 0}

    def counting(name, fn):
        return lambda *a: calls.__setitem__(name, calls[name] + 1) or fn(*a)

    # one oneDNN chunk is fc1 with GELU and fc2 adding into the residual (fused_mlp.onednn_chunk_)
    monkeypatch.setattr(fm, "onednn_chunk_", counting("chunk", fm.onednn_chunk_))
    monkeypatch.setattr(torch.nn.functional, "conv2d", counting("conv", torch.nn.functional.conv2d))
    torch.manual_seed(0)
    model = create_model("poolformer_mini").eval()
    x = torch.randn(3, 3, 64, 64)
    step = onednn_work(model, x)
    calls.update(chunk=0, conv=0)  # the forward that recorded the inputs does not count
    step()
    chunks = 0
    for stage, side in zip(model.stages, (16, 8, 4, 2), strict=True):
        for b in stage.blocks:
            L = 3 * side * side
            chunks += -(-L // fm.chunk_rows(L, b.mlp.fc1.weight.shape[0], 4, fm.mlp_chunk_bytes()))
    assert calls == {"chunk": chunks, "conv": 4}
    assert onednn_work(model, x.double()) is None
    assert onednn_work(create_model("setformer_mini").eval(), x) is None


def test_model_tokens_carry_constructor_arguments():
    from sofa.bench.models import create, model_kwargs

    assert model_kwargs("soft_tiny[max_landmarks=49; newton_iters=10]") == (
        "soft_tiny",
        {"max_landmarks": 49, "newton_iters": 10},
    )
    assert model_kwargs("poolformer_mini") == ("poolformer_mini", {})
    with pytest.raises(ValueError, match="key=value"):
        model_kwargs("soft_tiny[49]")
    m = create("sofa", "soft_mini[max_landmarks=4]", 32)
    assert m.stages[0].blocks[0].attn.max_landmarks == 4


def test_the_sofa_command_keeps_freed_memory_unless_told_not_to(monkeypatch, tmp_path):
    """sofa.cli.main turns keep_freed_memory on for its process and exports it for the bench's worker processes
    (restoring the environment afterwards); SOFA_KEEP_FREED_MEMORY=0 or ``bench --default-malloc`` keep glibc's
    default, and the bench's JSON says which it measured."""
    import json
    import os

    import sofa.runtime
    from sofa.cli import main

    calls, seen = [], []
    monkeypatch.setattr(sofa.runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sofa.runtime, "freed_memory_kept", lambda: bool(calls))
    monkeypatch.delenv("SOFA_KEEP_FREED_MEMORY", raising=False)
    assert main(["models", "poolformer_mini", "--no-macs"]) == 0
    assert calls == [1] and "SOFA_KEEP_FREED_MEMORY" not in os.environ
    monkeypatch.setenv("SOFA_KEEP_FREED_MEMORY", "0")
    assert main(["models", "poolformer_mini", "--no-macs"]) == 0
    assert calls == [1] and os.environ["SOFA_KEEP_FREED_MEMORY"] == "0"

    import sofa.bench.mixers as mx

    def spy(*a, **k):
        seen.append(os.environ.get("SOFA_KEEP_FREED_MEMORY"))
        return []

    monkeypatch.setattr(mx, "bench_mixers", spy)
    for flag, want in (([], "keeps freed memory"), (["--default-malloc"], "default")):
        monkeypatch.delenv("SOFA_KEEP_FREED_MEMORY", raising=False)
        js = tmp_path / f"m{len(seen)}.json"
        main(["bench", "mixers", "--quick", "--mixers", "pool", "--json", str(js), *flag])
        assert want in json.loads(js.read_text())["settings"]["malloc"]
    assert seen == ["1", "0"]  # what the worker processes would have inherited


def test_quick_sequence_run(tmp_path):
    """``--seq``: 1-D sequences of N tokens with the LRA models' mixers, tables and interleaved slopes by length."""
    js, md = tmp_path / "seq.json", tmp_path / "seq.md"
    code = main(
        [
            "bench",
            "mixers",
            "--quick",
            "--seq",
            "32,160",
            "--mixers",
            "pool,soft,set,sdpa",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--no-flush-compare",
            "--json",
            str(js),
            "--markdown",
            str(md),
        ]
    )
    assert code == 0
    payload = json.loads(js.read_text())
    recs = [r for r in payload["records"] if r["bench"] == "mixers"]
    assert {(r["mixer"], r["N"], r["mode"]) for r in recs} == {
        (m, n, mode) for m in ("pool", "soft", "set", "sdpa") for n in (32, 160) for mode in ("inference", "train")
    }
    for r in recs:
        assert r["status"] == "ok" and r["layout"] == "sequence" and r["side"] is None and r["length"] == r["N"], r
    # SOFT's landmarks: every token below 128, then 128 (a fixed count: linear cost)
    assert sorted(r["landmarks"] for r in recs if r["mixer"] == "soft") == [32, 32, 128, 128]
    pairs = [r for r in payload["records"] if r["bench"] == "mixer_pair"]
    assert {(r["mixer"], r["mode"]) for r in pairs} == {
        (m, mode) for m in ("pool", "soft", "set") for mode in ("inference", "train")
    }
    assert all(r["from_N"] == 32 and r["to_N"] == 160 and r["status"] == "ok" for r in pairs)
    text = md.read_text()
    assert "| mixer | 32 tokens | 160 tokens |" in text and "32→160" in text
    assert any(g["goal"].startswith("slope soft 32→160 tokens") for g in payload["goals"])


def test_sequence_cases_that_cannot_run_are_skipped_with_the_reason(monkeypatch):
    from sofa.bench import mixers as mx

    recs = bench_mixers(
        ["softmax_materialized"],
        [65536],
        ["inference"],
        repeats=1,
        isolate=False,
        mem_limit=16e9,
        layout="sequence",
        log=lambda s: None,
    )
    assert recs[0]["status"] == "skipped" and "would need" in recs[0]["reason"] and recs[0]["N"] == 65536
    monkeypatch.setattr(mx, "nystrom_available", lambda: False)
    recs = bench_mixers(
        ["nystrom"], [64], ["inference"], repeats=1, isolate=False, layout="sequence", log=lambda s: None
    )
    assert recs[0]["status"] == "skipped" and "pip install 'sofa[bench]'" in recs[0]["reason"]
    with pytest.raises(ValueError, match="soft_bounded"):
        bench_mixers(["soft_bounded"], [64], ["inference"], isolate=False, layout="sequence")


def test_nystrom_case_builds_the_package_module_at_128_landmarks(monkeypatch):
    """The nystrom case calls the package's NystromAttention(dim, dim_head, heads, num_landmarks) on (1, N, C)."""
    import sys
    import types

    built = {}

    class FakeNystromAttention(torch.nn.Module):
        def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, **kw):
            super().__init__()
            built.update(dim=dim, dim_head=dim_head, heads=heads, num_landmarks=num_landmarks)
            self.num_landmarks = num_landmarks
            self.proj = torch.nn.Linear(dim, dim)

        def forward(self, x, mask=None):
            return self.proj(x)

    monkeypatch.setitem(sys.modules, "nystrom_attention", types.SimpleNamespace(NystromAttention=FakeNystromAttention))
    recs = bench_mixers(
        ["nystrom"],
        [64],
        ["inference", "train"],
        repeats=1,
        isolate=False,
        layout="sequence",
        flush_compare=False,
        pair_slopes=False,
        log=lambda s: None,
    )
    assert built == dict(dim=64, dim_head=32, heads=2, num_landmarks=128)
    assert all(r["status"] == "ok" and r["landmarks"] == 64 for r in recs), recs


def test_train_mode_times_a_whole_training_step():
    """``sofa bench models --mode train``: the step updates the weights, its FLOPs are forward + backward (about
    3× the forward's: the backward computes two products per forward product, but not the input's gradient of the
    first layer), and the records say they are training steps."""
    from sofa.bench.models import bench_models, count_flops, count_train_flops, create, train_step

    torch.manual_seed(0)
    model = create("sofa", "soft_mini", 32).train()
    x = torch.randn(2, 3, 32, 32)
    before = [p.detach().clone() for p in model.parameters()]
    step = train_step(model, x, torch.device("cpu"), torch.float32)
    loss = step()
    assert torch.isfinite(loss) and model.training
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert changed > 0.9 * len(before)
    fwd = count_flops(model.eval(), x)
    both = count_train_flops(model.train(), x, torch.float32)
    assert 2.5 * fwd < both < 3.05 * fwd
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients behind

    recs = bench_models(
        ["poolformer_mini"],
        [32],
        ["fp32"],
        batch=2,
        repeats=1,
        warmup=1,
        isolate=False,
        gemm_size=64,
        mode="train",
        log=lambda s: None,
    )
    (r,) = [r for r in recs if r["bench"] == "models"]
    assert r["status"] == "ok" and r["mode"] == "train" and r["images_per_s"] > 0 and r["flops"] > 0
    with pytest.raises(ValueError, match="mode"):
        bench_models(["poolformer_mini"], [32], mode="training", isolate=False, log=lambda s: None)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_flop_counter_counts_a_grouped_convolutions_backward_by_hand(groups):
    """A convolution's backward is two products as large as its forward (the input's gradient and the weight's):
    counted by hand from the shapes, for dense, grouped and depthwise filters (torch's stock formula counts the
    weight's gradient ``groups`` times over)."""
    from sofa.models.flops import flop_counter

    B, C, H, W, k, cout = 2, 16, 10, 12, 3, 16
    conv = torch.nn.Conv2d(C, cout, k, padding=1, groups=groups, bias=False)
    x = torch.randn(B, C, H, W, requires_grad=True)
    fwd = 2 * B * H * W * cout * (C // groups) * k * k  # 2 × MACs, by hand
    with flop_counter() as c:
        y = conv(x)
    assert c.get_total_flops() == fwd
    with flop_counter() as c:
        y.sum().backward()
    assert c.get_total_flops() == 2 * fwd
    x2 = torch.randn(B, C, H, W)  # no input gradient: the weight's alone
    y = conv(x2)
    with flop_counter() as c:
        y.sum().backward()
    assert c.get_total_flops() == fwd
