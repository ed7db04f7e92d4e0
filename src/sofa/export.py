"""Export a model to ONNX through PyTorch's exporter (``torch.onnx.export(..., dynamo=True)``), and check the file
with ONNX Runtime.

The exporter captures the model with ``torch.export``. It runs under the ``SOFA_ONE_PASS`` switch
(:data:`sofa.switches.ONE_PASS`), so every op takes its one-pass form, the plain graph a file can hold, instead of
the in-place fused CPU paths; every op's ``"auto"`` rule also picks that form under a graph capture (see
:func:`sofa.ops.common.is_tracing`), so SOFT's Newton–Schulz iterations and SeT's Sinkhorn iterations become
plain matrix products in the file. Needs the ``export`` extra (``pip install 'sofa[export]'``).

:func:`export_model` is what ``sofa export`` runs: build a zoo model (optionally with a checkpoint), write the
file, and compare ONNX Runtime's CPU outputs with PyTorch's (:func:`verify_onnx`).
"""

from __future__ import annotations

import importlib
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sofa import switches
from sofa.errors import UserError, WriteFailed, writing

__all__ = [
    "export_onnx",
    "export_model",
    "verify_onnx",
    "require_export_extra",
    "check_img_size",
    "check_sizes",
    "ExportResult",
    "VerificationFailed",
    "OPSET",
    "MIN_OPSET",
    "STRIDE",
    "RTOL",
]

#: the ONNX opset written
OPSET = 18
#: the oldest opset the exporter writes these models in
MIN_OPSET = 17
#: the total stride of every image model: with ``dynamic``, height and width may be any multiple of it
STRIDE = 32
#: ONNX Runtime's outputs must agree with PyTorch's to this fraction of the largest |output|
RTOL = 1e-4
#: the packages of the ``export`` extra
EXTRA = ("onnx", "onnxscript", "onnxruntime")


class VerificationFailed(UserError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance (or in shape)."""

    exit_code = 1


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the file, its size, the checked input sizes (B, H, W) and the largest
    difference of ONNX Runtime's outputs from PyTorch's, relative to the largest |output|."""

    path: Path
    size_bytes: int
    sizes: List[Tuple[int, int, int]]
    max_rel_diff: float


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    img_size: Tuple[int, int] = (224, 224),
    dynamic: bool = False,
    opset: int = OPSET,
    batch: int = 1,
) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as an ONNX model with one float32 input ``image`` of shape
    (B, 3, H, W) and the model's outputs.

    Args:
        model: an image model of the zoo (classifier or ``features_only``).
        path: the ``.onnx`` file to write.
        img_size: (H, W) of the example input; the file's input size when not ``dynamic``.
        dynamic: batch, height and width become symbolic (height and width multiples of :data:`STRIDE`).
        opset: the ONNX opset version (≥ :data:`MIN_OPSET`).
        batch: the file's batch size when not ``dynamic``.

    Returns:
        ``path``.
    """
    path = Path(path)
    model = model.eval()
    example = torch.randn(2 if dynamic else batch, 3, *img_size)
    shapes = None
    if dynamic:
        batch_dim = torch.export.Dim("batch", min=1, max=1024)
        height = STRIDE * torch.export.Dim("height_blocks", min=1, max=128)
        width = STRIDE * torch.export.Dim("width_blocks", min=1, max=128)
        shapes = ({0: batch_dim, 2: height, 3: width},)
    with torch.no_grad(), switches.ONE_PASS.override(True), warnings.catch_warnings():
        # torch's own pytree deprecation inside the exporter; nothing a caller can act on
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            dynamic_shapes=shapes,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def require_export_extra() -> None:
    """Raise a :class:`~sofa.errors.UserError` naming the install command where a package of the ``export``
    extra cannot be imported."""
    missing = []
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"exporting to ONNX needs the export extra: pip install 'sofa[export]' (missing: {', '.join(missing)})"
        )


def check_img_size(img_size: Sequence[int]) -> Tuple[int, int]:
    """``img_size`` as (H, W), each a positive multiple of :data:`STRIDE`, else a :class:`UserError`."""
    h, w = (int(v) for v in img_size)
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise UserError(f"--img-size {h} {w}: height and width must be positive multiples of {STRIDE}")
    return h, w


def check_sizes(img_size: Tuple[int, int], dynamic: bool) -> List[Tuple[int, int, int]]:
    """The (B, H, W) inputs a file is checked at: the export size; with ``dynamic`` also a batch of two at another,
    non-square size (each side one or two strides larger)."""
    h, w = img_size
    sizes = [(1, h, w)]
    if dynamic:
        other = (h + STRIDE, w + 2 * STRIDE) if h + STRIDE != w + 2 * STRIDE else (h + 2 * STRIDE, w + STRIDE)
        sizes.append((2, *other))
    return sizes


def verify_onnx(model: nn.Module, path: Union[str, Path], sizes: Sequence[Tuple[int, int, int]]) -> float:
    """Run ``path`` in ONNX Runtime (CPU) and ``model`` in PyTorch on the same random inputs of each (B, H, W) in
    ``sizes``; the largest difference of any output relative to the largest |output| of PyTorch's. Outputs of
    another number or shape raise :class:`VerificationFailed`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = model(x)
        want = list(want) if isinstance(want, (list, tuple)) else [want]
        got = session.run(None, {name: x.numpy()})
        shapes = [tuple(t.shape) for t in want], [tuple(g.shape) for g in got]
        if shapes[0] != shapes[1]:
            raise VerificationFailed(
                f"{path}: ONNX Runtime gives outputs of shapes {shapes[1]} for a {b}×3×{h}×{w} input, PyTorch "
                f"{shapes[0]}"
            )
        for g, t in zip(got, want, strict=True):
            scale = float(t.abs().max().clamp_min(1e-30))
            worst = max(worst, float((torch.from_numpy(g) - t).abs().max()) / scale)
    return worst


def build_model(name: str, checkpoint: Optional[str] = None, features: bool = False) -> nn.Module:
    """Image model ``name`` of the zoo in eval mode, with the weights of ``checkpoint`` (a run directory, a sofa
    safetensors / ``last.pt``, or an original release ``.pth``; see :func:`sofa.checkpoint.read_checkpoint`)."""
    from sofa.models import create_model, get_entry

    try:
        entry = get_entry(name)
    except ValueError as err:
        raise UserError(str(err)) from None
    if entry.family in ("lra", "text"):
        what = "of the LRA benchmark" if entry.family == "lra" else "(a text encoder)"
        raise UserError(f"{name} is a sequence model {what}; sofa export takes the image models")
    kwargs = {"features_only": True} if features else {}
    return create_model(name, checkpoint_path=checkpoint, **kwargs).eval()


def export_model(
    name: str,
    out: Union[str, Path],
    checkpoint: Optional[str] = None,
    img_size: Sequence[int] = (224, 224),
    dynamic: bool = False,
    opset: int = OPSET,
    features: bool = False,
) -> ExportResult:
    """Build zoo model ``name`` (:func:`build_model`), write it to ``out`` as ONNX (:func:`export_onnx`) and
    check ONNX Runtime's outputs against PyTorch's (:func:`verify_onnx`, at :func:`check_sizes`).

    ``out`` is written through a temporary file in its folder, renamed over it once complete. Raises a
    :class:`UserError` for a missing ``export`` extra, an unknown model, a size that is not a multiple of
    :data:`STRIDE` or an opset below :data:`MIN_OPSET`; :class:`~sofa.errors.WriteFailed` where ``out`` cannot
    be written (found before the export); :class:`VerificationFailed` (``out`` written) where the outputs differ
    by more than :data:`RTOL`.
    """
    require_export_extra()
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset}: the exporter writes opset {MIN_OPSET} or newer (default {OPSET})")
    img_size = check_img_size(img_size)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the .onnx file to write")
    model = build_model(name, checkpoint, features)
    tmp = _reserve(out)
    try:
        with writing(out):
            export_onnx(model, tmp, img_size, dynamic, opset)
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    sizes = check_sizes(img_size, dynamic)
    diff = verify_onnx(model, out, sizes)
    if not diff <= RTOL:
        at = ", ".join(f"{b}×3×{h}×{w}" for b, h, w in sizes)
        raise VerificationFailed(
            f"{out} is written, but ONNX Runtime's outputs differ from PyTorch's by {diff:.2e} of the largest "
            f"|output| at {at} (limit {RTOL:g})"
        )
    return ExportResult(out, out.stat().st_size, sizes, diff)


def _reserve(out: Path) -> Path:
    """Create an empty temporary file next to ``out`` (its folder created): a folder that cannot be written
    fails here, before the export, as :class:`~sofa.errors.WriteFailed`."""
    if out.parent.exists() and not out.parent.is_dir():
        raise WriteFailed(f"cannot write {out}: {out.parent} is a file, not a folder")
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        tmp.touch(exist_ok=False)
    return tmp
