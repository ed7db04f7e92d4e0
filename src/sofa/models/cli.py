"""``sofa models`` (the zoo as a table) and ``sofa convert`` (an original checkpoint → sofa safetensors)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list every model with its parameters beside the papers' numbers (GMACs with --macs)",
        description="Every registered model: parameters (counted on the meta device: no memory, no "
        "initialisation) beside the papers' parameters, GMACs and top-1. With --macs also the "
        "multiply-accumulates (GMACs, what the papers call FLOPs) of one image, counted by a "
        "dispatcher-level counter that sees every matmul and convolution (SOFT's Newton iterations "
        "included); that runs each model once on the CPU, about a minute for all of them.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    p.add_argument("--family", choices=["soft", "setformer", "poolformer", "lra", "text"], help="only this family")
    p.add_argument(
        "--macs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a GMACs column: count each model's multiply-accumulates (slow; default off)",
    )
    p.add_argument(
        "--img-size", type=int, default=None, help="input size for the MAC count (default 224; implies --macs)"
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=models_command)

    c = subparsers.add_parser(
        "convert",
        help="convert an original SOFT / PoolFormer checkpoint to sofa safetensors",
        description="Read ORIGINAL (the released .pth / .pth.tar, bare or wrapped in state_dict / model / "
        "state_dict_ema, with or without a module. prefix; read with weights_only=True), map it to "
        "sofa's layout, load it strictly into --model (every missing, unexpected or wrongly shaped key "
        "is named) and write OUT as safetensors.",
    )
    c.add_argument("original", help="the released checkpoint")
    c.add_argument("out", help="the safetensors file to write")
    c.add_argument("--model", required=True, help="sofa model name (see `sofa models`)")
    c.add_argument(
        "--num-classes", type=int, default=None, help="classes of the classifier (default: the checkpoint's)"
    )
    c.add_argument(
        "--features",
        action="store_true",
        help="a dense (detection / segmentation) backbone checkpoint with per-stage output norms",
    )
    c.set_defaults(func=convert_command)


def _table(rows: List[List[str]], header: List[str], markdown: bool) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(lines)
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(out)


COLUMNS = ["model", "family", "params (M)", "paper (M)", "Δ", "GMACs", "paper GMACs", "paper top-1", "note"]
GMACS = COLUMNS.index("GMACs")  # the one column that counts MACs; left out unless asked for


def model_rows(pattern: str = "*", family: Optional[str] = None, macs: bool = False, img_size: int = 224):
    """One row per model, as :data:`COLUMNS`: name, family, params (M), paper params, Δ, [GMACs at ``img_size``,
    only with ``macs``], paper GMACs, paper top-1, note. Parameters are counted on the meta device; ``macs``
    runs each model once (:func:`sofa.models.flops.model_macs`)."""
    from sofa.models import get_entry, list_models
    from sofa.models.flops import count_params, create_on_meta, model_macs

    rows = []
    for name in list_models(pattern, family):
        entry = get_entry(name)
        params = count_params(create_on_meta(name)) / 1e6
        paper = entry.paper
        pp = paper.get("params")
        row = [
            name,
            entry.family,
            f"{params:.2f}",
            f"{pp}" if pp is not None else "-",
            (f"{(params - pp) / pp * 100:+.1f}%" if pp else "-"),
            f"{paper['macs']}" if paper.get("macs") is not None else "-",
            f"{paper['top1']}" if paper.get("top1") is not None else "-",
            paper.get("note", ""),
        ]
        if macs:
            row.insert(GMACS, f"{model_macs(name, img_size) / 1e9:.2f}")
        rows.append(row)
    return rows


def models_command(args) -> int:
    import torch

    macs = args.macs if args.macs is not None else args.img_size is not None
    img_size = args.img_size or 224
    with torch.no_grad():  # a context, not a global switch: the command also runs inside other programs
        rows = model_rows(args.pattern, args.family, macs, img_size)
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    header = list(COLUMNS)
    if not macs:
        del header[GMACS]
    elif img_size != 224:
        header[GMACS] = f"GMACs@{img_size}"
    print(_table(rows, header, args.markdown))
    return 0


def convert_command(args) -> int:
    """Write ``args.out`` with metadata (model, task, num_classes) that ``sofa predict / eval / train
    --checkpoint`` read, so the converted file needs no more options. Every failure is one line, exit code 1."""
    from sofa.checkpoint import save_weights
    from sofa.errors import UserError
    from sofa.models import create_model, get_entry
    from sofa.models.flops import count_params

    try:
        get_entry(args.model)
        kwargs = {}
        if args.num_classes is not None:
            kwargs["num_classes"] = args.num_classes
        if args.features:
            kwargs["features_only"] = True
        model = create_model(args.model, checkpoint_path=args.original, **kwargs)
        inner = getattr(model, "model", model)  # a features-only wrapper holds the backbone as .model
        meta = {"model": args.model, "num_classes": getattr(inner, "num_classes", 0), "source": str(args.original)}
        meta.update({"features_only": True} if args.features else {"task": "classification"})
        if getattr(inner, "depths", None) is not None:
            meta["depths"] = list(inner.depths)
        save_weights(args.out, inner.state_dict(), meta)
    except (UserError, ValueError) as err:
        print(f"sofa convert: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"sofa convert: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {args.model}, {count_params(inner) / 1e6:.2f}M parameters, {meta['num_classes']} classes")
    return 0
