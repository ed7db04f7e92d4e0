"""``sofa export``: a zoo model (optionally with a checkpoint) → an ONNX file, checked with ONNX Runtime.

sofa export poolformer_s12 poolformer_s12.onnx --checkpoint runs/poolformer_s12 --dynamic
sofa export poolformer_mini pm.onnx --img-size 256 320 --features
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from sofa.export import MIN_OPSET, OPSET, RTOL, STRIDE

    p = subparsers.add_parser(
        "export",
        help="write a model as an ONNX file and check it with ONNX Runtime (needs the export extra)",
        description=__doc__
        + f"\nThe file has one float32 input 'image' (B, 3, H, W). ONNX Runtime's CPU outputs are compared with "
        f"PyTorch's at the export size (and, with --dynamic, at another size); a difference above {RTOL:g} of the "
        f"largest |output| exits with code 1. Needs the export extra: pip install 'sofa[export]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model name (`sofa models` lists them)")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument(
        "--checkpoint",
        help="weights: a run directory of sofa train, a sofa .safetensors / last.pt, or an original release .pth "
        "(default: random weights)",
    )
    p.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        default=(224, 224),
        metavar=("H", "W"),
        help=f"input height and width, multiples of {STRIDE} (default 224 224)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help=f"batch, height and width symbolic (height and width any multiple of {STRIDE})",
    )
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, {MIN_OPSET} or newer (default {OPSET})")
    p.add_argument(
        "--features", action="store_true", help="the features_only backbone: one output per stage instead of logits"
    )
    p.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> int:
    """Run :func:`sofa.export.export_model`; one line on success, one line on stderr and the error's exit code
    (a :class:`sofa.errors.UserError`) otherwise."""
    from sofa.errors import UserError
    from sofa.export import STRIDE, export_model

    try:
        r = export_model(args.model, args.out, args.checkpoint, args.img_size, args.dynamic, args.opset, args.features)
    except UserError as err:
        print(f"sofa export: {err}", file=sys.stderr)
        return err.exit_code
    shape = (
        f"(batch, 3, H, W), H and W multiples of {STRIDE}" if args.dynamic else "(1, 3, {}, {})".format(*args.img_size)
    )
    checked = ", ".join(f"{b}×3×{h}×{w}" for b, h, w in r.sizes)
    print(
        f"wrote {r.path}: {args.model}, {r.size_bytes / 1e6:.1f} MB, opset {args.opset}, input {shape}; "
        f"ONNX Runtime matches PyTorch to {r.max_rel_diff:.1e} relative ({checked})"
    )
    return 0
