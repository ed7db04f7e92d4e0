"""sofa compare: runs side by side (table with mean ± sd over seeds, curves plot, JSON) and its refusals."""

from __future__ import annotations

import json
import statistics

import pytest

from sofa.cli import main


def write_run(path, model, seed, val_losses, results=None, **options):
    """A run directory as sofa train writes it: step and epoch records, config.yaml, optional results.json."""
    path.mkdir(parents=True)
    lines = []
    for i, v in enumerate(val_losses, start=1):
        lines.append({"type": "step", "epoch": i - 0.5, "global_step": 10 * i - 5, "loss": v + 1.0})
        lines.append({"type": "epoch", "epoch": i, "global_step": 10 * i, "train_loss": v + 0.5, "val_loss": v})
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"type": "epoch", "glob'  # a line cut by a killed run
    (path / "metrics.jsonl").write_text(text)
    extra = "".join(f"{k}: {v}\n" for k, v in options.items())
    (path / "config.yaml").write_text(f"model: {model}\nseed: {seed}\noutput: {path}\n{extra}")
    if results is not None:
        (path / "results.json").write_text(json.dumps(results))
    return path


def test_compare_groups_seeds_and_draws_every_run(tmp_path, capsys):
    def results(test, dev):
        return {"test_metrics": {"acc": test}, "metrics": {"acc": dev}}

    runs = [
        write_run(tmp_path / "a0", "m_soft", 0, [3.0, 2.5, 2.2], results(80.0, 78.0)),
        write_run(tmp_path / "a1", "m_soft", 1, [3.1, 2.4, 2.3], results(84.0, 79.0)),
        write_run(tmp_path / "b0", "m_set", 0, [2.9, 2.6, 2.7], results(70.0, 71.0)),
    ]
    png, js = tmp_path / "c.png", tmp_path / "c.json"
    argv = ["compare", *map(str, runs), "--plot", str(png), "--json", str(js), "--line", "2.5=unigram entropy"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    sd = statistics.stdev([80.0, 84.0])
    assert f"| m_soft | 2 | 30 | 2.25 ± 0.071 | 2.25 ± 0.071 | 78.5 ± 0.71 | 82 ± {sd:.2g} |" in out
    assert "| m_set | 1 | 30 | 2.7 | 2.6 | 71 | 70 |" in out  # final and best differ: the best is the lowest loss
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    payload = json.loads(js.read_text())
    assert [r["curve"] for r in payload["runs"]][0] == [[10.0, 20.0, 30.0], [3.0, 2.5, 2.2]]
    assert {r["model"] for r in payload["runs"]} == {"m_soft", "m_set"}


def test_runs_that_differ_in_more_than_the_seed_are_told_apart(tmp_path, capsys):
    runs = [
        write_run(tmp_path / "p0", "m", 0, [1.0], init="runs/pre_m"),
        write_run(tmp_path / "p1", "m", 1, [2.0], init="runs/pre_m"),
        write_run(tmp_path / "s0", "m", 0, [4.0], init="null"),
        write_run(tmp_path / "o0", "other", 0, [3.0], init="null"),
    ]
    assert main(["compare", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "| m (init=pre_m) | 2 | 10 | 1.5 ± 0.71 |" in out and "| m (init=None) | 1 | 10 | 4 |" in out
    assert "| other | 1 | 10 | 3 |" in out  # alone with its model: no qualifier


def test_compare_per_run_and_another_metric(tmp_path, capsys):
    a = write_run(tmp_path / "a", "m", 0, [1.0, 0.5])
    assert main(["compare", str(a), "--group-by", "run", "--metric", "train_loss"]) == 0
    assert f"| {a} | 1 | 20 | 1 | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "{tmp}/nothing"], "not a run directory"),
        (["compare", "{tmp}/a", "--metric", "val_acc"], "they record: train_loss, val_loss"),
        (["compare", "{tmp}/a", "--plot", "{tmp}/p.png", "--line", "low"], "VALUE=LABEL"),
    ],
)
def test_compare_refuses_clearly(tmp_path, capsys, argv, message):
    write_run(tmp_path / "a", "m", 0, [1.0])
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err
