"""Every image model through the ecosystem's graph routes: torch.fx (and the FX feature extractors of timm and
torchvision), TorchScript, torch.export with dynamic batch and size, ONNX with ONNX Runtime, and
``torch.compile(fullgraph=True)``, each as a classifier and as a ``features_only`` backbone.

The default run takes the ``*_mini`` models (soft_norm_mini's torch.export and ONNX checks, on soft_mini's path,
under ``-m slow``); the hybrids (with one block per stage) and the full-size models run
the same checks under ``-m slow``. Exactness checks (fx, TorchScript, torch.export) run in float64, where eager and the
captured graph take the same plain operations, so they agree to 1e-6 relative; ONNX Runtime and the compiled model
run in float32 against eager's float32 outputs (its CPU fast paths included), to 1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sofa.models import create_model, get_entry, list_models

IMAGE_MODELS = [n for n in list_models() if get_entry(n).family not in ("lra", "text")]
HYBRIDS = ("poolformer_s12_attn", "poolformer_s12_soft", "poolformer_s12_set", "poolformer_s12_identity")
FAST = [n for n in IMAGE_MODELS if n.endswith("_mini")]
FULL = [n for n in IMAGE_MODELS if not n.endswith("_mini") and n not in HYBRIDS]
CASES = (
    [pytest.param(n, id=n) for n in FAST]
    + [pytest.param(n, id=n, marks=pytest.mark.slow) for n in HYBRIDS]
    + [pytest.param(n, id=f"{n}-full", marks=pytest.mark.slow) for n in FULL]
)
#: every model's total stride: inputs are multiples of it
STRIDE = 32
SIZES = ((2, 64, 64), (1, 96, 64), (3, 64, 128))


def build(name: str, full: bool = False, features_only: bool = False, dtype=torch.float64) -> nn.Module:
    """``name`` in eval mode; the hybrids get one block per stage unless ``full``."""
    kwargs = {"features_only": features_only}
    if name in HYBRIDS and not full:
        kwargs["depths"] = (1, 1, 1, 1)
    torch.manual_seed(0)
    return create_model(name, **kwargs).eval().to(dtype)


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def assert_close(got, want, rtol: float) -> None:
    """Each output within ``rtol`` of the largest magnitude of eager's."""
    got, want = as_list(got), as_list(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = w.abs().max().clamp_min(1e-30)
        assert float((g - w).abs().max() / scale) <= rtol, float((g - w).abs().max() / scale)


def forward_and_grads(model: nn.Module, x: torch.Tensor):
    """The outputs and the gradients of every parameter for the sum of all outputs times fixed weights."""
    model.zero_grad(set_to_none=True)
    outputs = as_list(model(x))
    torch.manual_seed(1)
    loss = sum((y * torch.randn_like(y)).sum() for y in outputs)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return [y.detach() for y in outputs], grads


def sample(size=SIZES[0], dtype=torch.float64):
    torch.manual_seed(2)
    return torch.randn(size[0], 3, size[1], size[2], dtype=dtype)


@pytest.mark.parametrize("features_only", [False, True], ids=["classifier", "features"])
@pytest.mark.parametrize("name", CASES)
def test_fx_symbolic_trace(name, features_only):
    model = build(name, full=name in FULL, features_only=features_only)
    traced = torch.fx.symbolic_trace(model)
    x = sample()
    want = forward_and_grads(model, x)
    got = forward_and_grads(traced, x)
    assert_close(got[0], want[0], 1e-6)
    assert_close(got[1], want[1], 1e-6)


def stage_outputs(model: nn.Module, x: torch.Tensor) -> list:
    """The eager outputs of the modules ``model.feature_info`` names, by forward hooks."""
    outputs = []
    hooks = [
        model.get_submodule(info["module"]).register_forward_hook(lambda _m, _i, y: outputs.append(y))
        for info in model.feature_info
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return outputs


@pytest.mark.parametrize("name", CASES)
def test_fx_feature_extractors(name):
    """timm's and torchvision's FX feature extraction return the maps of the modules ``feature_info`` names."""
    from timm.models import create_feature_extractor as timm_extractor
    from torchvision.models.feature_extraction import create_feature_extractor as tv_extractor

    model = build(name, full=name in FULL)
    nodes = {info["module"]: str(i) for i, info in enumerate(model.feature_info)}
    want = stage_outputs(model, sample())
    assert [tuple(w.shape[1:2]) for w in want] == [(info["num_chs"],) for info in model.feature_info]
    for extractor in (timm_extractor, tv_extractor):
        with torch.no_grad():
            got = extractor(model, return_nodes=nodes)(sample())
        assert_close([got[str(i)] for i in range(len(nodes))], want, 1e-6)


@pytest.mark.parametrize("features_only", [False, True], ids=["classifier", "features"])
@pytest.mark.parametrize("name", CASES)
def test_torchscript(name, features_only):
    model = build(name, full=name in FULL, features_only=features_only)
    scripted = torch.jit.script(model)
    x = sample()
    with torch.no_grad():
        assert_close(scripted(x), model(x), 1e-6)
    want = forward_and_grads(model, x)
    got = forward_and_grads(scripted, x)
    assert_close(got[1], want[1], 1e-6)


def slow_for(*names: str) -> list:
    """:data:`CASES` with ``names`` also marked slow: the default run keeps one model of each code path."""
    return [
        pytest.param(*c.values, id=c.id, marks=[*c.marks, pytest.mark.slow] if c.id in names else c.marks)
        for c in CASES
    ]


#: soft_norm_mini takes soft_mini's graph path (normalisation aside, which fx, TorchScript and compile check by default)
EXPORT_CASES = slow_for("soft_norm_mini")
#: poolformer_mini's dynamic ONNX file is checked in ONNX Runtime at two sizes by tests/test_export_cli.py
ONNX_CASES = slow_for("poolformer_mini", "soft_norm_mini")


def dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=64)
    height = STRIDE * torch.export.Dim("height_blocks", min=1, max=64)
    width = STRIDE * torch.export.Dim("width_blocks", min=1, max=64)
    return ({0: batch, 2: height, 3: width},)


@pytest.mark.parametrize("features_only", [False, True], ids=["classifier", "features"])
@pytest.mark.parametrize("name", EXPORT_CASES)
def test_torch_export_dynamic(name, features_only):
    model = build(name, full=name in FULL, features_only=features_only)
    program = torch.export.export(model, (sample(),), dynamic_shapes=dynamic_shapes())
    exported = program.module()
    for size in SIZES:
        x = sample(size)
        with torch.no_grad():
            assert_close(exported(x), model(x), 1e-6)


@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnx_runtime_matches_pytorch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install 'sofa[export]') is not installed")
    from sofa.export import export_onnx

    model = build(name, full=name in FULL, dtype=torch.float32)
    path = export_onnx(model, tmp_path / f"{name}.onnx", img_size=(224, 224), dynamic=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((1, 224, 224), (2, 96, 160)):
        x = sample(size, torch.float32)
        with torch.no_grad():
            want = model(x)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert_close(torch.from_numpy(got), want, 1e-4)


@pytest.mark.parametrize("features_only", [False, True], ids=["classifier", "features"])
@pytest.mark.parametrize("name", CASES)
def test_compile_fullgraph(name, features_only):
    """No graph break at inference (``fullgraph=True`` raises on one); the eager backend keeps the test fast, the
    graph capture is the same as inductor's. Gradients through captured graphs are checked by the fx and TorchScript
    tests."""
    model = build(name, full=name in FULL, features_only=features_only, dtype=torch.float32)
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
    x = sample(dtype=torch.float32)
    with torch.no_grad():
        assert_close(compiled(x), model(x), 1e-4)
