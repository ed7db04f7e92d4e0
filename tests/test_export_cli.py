"""``sofa export`` end to end on poolformer_mini (fixed and dynamic sizes, with a sofa checkpoint), its errors,
and ``sofa bench models --runtime onnxruntime``.

Each export takes seconds (the exporter's graph capture); the error cases stop before any export.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from sofa.cli import main

ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install 'sofa[export]') is not installed")

MODEL = "poolformer_mini"
CLASSES = 7


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A poolformer_mini classifier of 7 classes with seeded random weights and its sofa checkpoint."""
    from sofa.checkpoint import save_weights
    from sofa.models import create_model

    torch.manual_seed(3)
    model = create_model(MODEL, num_classes=CLASSES).eval()
    path = tmp_path_factory.mktemp("ckpt") / "weights.safetensors"
    save_weights(path, model.state_dict(), {"model": MODEL, "num_classes": CLASSES, "task": "classification"})
    return model, path


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """``sofa export`` of the checkpoint at a fixed 64×96 input: (exit code, printed line, file)."""
    out = tmp_path_factory.mktemp("onnx") / "sub" / "fixed.onnx"
    code, line = _cli(["export", MODEL, str(out), "--checkpoint", str(trained[1]), "--img-size", "64", "96"])
    return code, line, out


def _cli(argv):
    from io import StringIO
    from unittest import mock

    buf = StringIO()
    with mock.patch.object(sys, "stdout", buf):
        code = main(argv)
    return code, buf.getvalue()


def test_fixed_size_export_carries_the_checkpoint(trained, exported):
    model, _ = trained
    code, line, out = exported
    assert code == 0, line
    assert line.startswith(f"wrote {out}: {MODEL}, ") and " MB, opset 18," in line and "relative" in line
    assert not [p for p in out.parent.iterdir() if p.name != out.name], "a temporary file was left"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = model(x)
    got = run_onnx(out, x)
    assert got.shape == (1, CLASSES)
    assert rel_diff(got, want) <= 1e-4
    with pytest.raises(Exception, match="(?i)dimension|shape|index"):  # fixed: another size is refused
        run_onnx(out, torch.randn(1, 3, 96, 64))


def test_dynamic_export_of_a_run_directory_takes_other_batches_and_sizes(trained, tmp_path, capsys):
    model, weights = trained
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(weights, run / "best.safetensors")  # what sofa train leaves in its run directory
    out = tmp_path / "dyn.onnx"
    argv = ["export", MODEL, str(out), "--checkpoint", str(run), "--img-size", "64", "64", "--dynamic"]
    assert main(argv + ["--opset", "17"]) == 0
    line = capsys.readouterr().out
    assert "opset 17" in line and "(1×3×64×64, 2×3×96×128)" in line, line
    for b, h, w in ((3, 128, 64), (1, 32, 160)):
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            want = model(x)
        got = run_onnx(out, x)
        assert got.shape == (b, CLASSES)
        assert rel_diff(got, want) <= 1e-4


def test_released_checkpoint_exports_to_the_original_codes_logits(reference_dir, tmp_path, capsys):
    """The original PoolFormer code's layout (a bare .pth): ONNX Runtime gives that code's own logits."""
    from safetensors.torch import load_file

    out = tmp_path / "released.onnx"
    assert main(["export", MODEL, str(out), "--checkpoint", str(reference_dir / f"{MODEL}.pth")]) == 0
    io = load_file(reference_dir / f"{MODEL}.safetensors")
    x, want = io["input_224x224"], io["logits_224x224"]
    got = torch.cat([run_onnx(out, x[i : i + 1]) for i in range(len(x))])
    assert rel_diff(got, want) <= 1e-4


def test_features_export_has_one_output_per_stage(tmp_path, capsys):
    out = tmp_path / "feat.onnx"
    assert main(["export", MODEL, str(out), "--img-size", "64", "64", "--features"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"image": torch.randn(1, 3, 64, 64).numpy()})
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


def test_verification_failure_exits_non_zero(exported, tmp_path, monkeypatch, capsys):
    """A file whose weights differ from the model's fails the check: the export of another checkpoint is
    copied where the exporter would write."""
    import sofa.export

    def wrong_file(model, path, *args, **kwargs):
        shutil.copyfile(exported[2], path)
        return path

    monkeypatch.setattr(sofa.export, "export_onnx", wrong_file)
    from sofa.checkpoint import save_weights
    from sofa.models import create_model

    torch.manual_seed(4)
    other = tmp_path / "other.safetensors"
    save_weights(other, create_model(MODEL, num_classes=CLASSES).state_dict(), {"model": MODEL})
    out = tmp_path / "bad.onnx"
    code = main(["export", MODEL, str(out), "--checkpoint", str(other), "--img-size", "64", "96"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("sofa export: ") and "differ from PyTorch's" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nonexistent_model", "{out}"], "unknown model 'nonexistent_model'"),
        ([MODEL, "{out}", "--img-size", "224", "200"], "multiples of 32"),
        ([MODEL, "{out}", "--opset", "13"], "opset 17 or newer"),
        (["lra_soft", "{out}"], "LRA"),
        ([MODEL, "{tmp}"], "is a folder"),
    ],
    ids=["unknown-model", "size", "opset", "lra", "folder"],
)
def test_user_errors_are_one_line_exit_2(argv, message, tmp_path, capsys):
    argv = [a.format(out=tmp_path / "m.onnx", tmp=tmp_path) for a in argv]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sofa export: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_export_extra_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", MODEL, str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'sofa[export]'" in err and "onnxruntime" in err and err.count("\n") == 1


def test_unwritable_output_fails_before_the_export(tmp_path, monkeypatch, capsys):
    """OUT in a "folder" that is a file: no user, root included, can write there."""
    import sofa.export

    monkeypatch.setattr(sofa.export, "export_onnx", lambda *a, **k: pytest.fail("exported where it cannot write"))
    (tmp_path / "file").write_text("")
    code = main(["export", MODEL, str(tmp_path / "file" / "m.onnx")])
    err = capsys.readouterr().err
    assert code != 0 and "cannot write" in err and err.count("\n") == 1, err


def test_bench_models_times_both_runtimes(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["bench", "models", "--models", MODEL, "--sizes", "32", "--batch", "2", "--repeats", "2"]
    argv += ["--warmup", "1", "--no-isolate", "--gemm-size", "64", "--runtime", "onnxruntime", "--json", str(path)]
    assert main(argv) == 0
    records = [r for r in json.loads(path.read_text())["records"] if r["bench"] == "models"]
    assert sorted(r["runtime"] for r in records) == ["onnxruntime", "pytorch"]
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 and r["batch"] == 2 for r in records), records
    assert "onnxruntime" in capsys.readouterr().out


def test_bench_onnxruntime_is_refused_on_another_device(capsys):
    assert main(["bench", "models", "--runtime", "onnxruntime", "--device", "cuda"]) == 2
    assert "use --device cpu" in capsys.readouterr().err
