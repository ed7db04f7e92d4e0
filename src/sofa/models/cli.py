"""``sofa models`` (the zoo as a table) and ``sofa convert`` (an original checkpoint → sofa safetensors)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list every model with parameters and GMACs at 224² beside the papers' numbers",
        description="Every registered model: parameters and multiply-accumulates (GMACs, what the papers call "
                    "FLOPs) of one 224x224 image, counted by a dispatcher-level counter that sees every matmul "
                    "and convolution (SOFT's Newton iterations included), beside the papers' numbers.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    p.add_argument("--family", choices=["soft", "setformer", "poolformer"], help="only this family")
    p.add_argument("--no-macs", action="store_true", help="skip the MAC count (fast)")
    p.add_argument("--img-size", type=int, default=224, help="input size for the MAC count (default 224)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=models_command)

    c = subparsers.add_parser(
        "convert", help="convert an original SOFT / PoolFormer checkpoint to sofa safetensors",
        description="Read ORIGINAL (the released .pth / .pth.tar, bare or wrapped in state_dict / model / "
                    "state_dict_ema, with or without a module. prefix; read with weights_only=True), map it to "
                    "sofa's layout, load it strictly into --model (every missing, unexpected or wrongly shaped key "
                    "is named) and write OUT as safetensors.",
    )
    c.add_argument("original", help="the released checkpoint")
    c.add_argument("out", help="the safetensors file to write")
    c.add_argument("--model", required=True, help="sofa model name (see `sofa models`)")
    c.add_argument("--num-classes", type=int, default=None,
                   help="classes of the classifier (default: the checkpoint's)")
    c.add_argument("--features", action="store_true",
                   help="a dense (detection / segmentation) backbone checkpoint with per-stage output norms")
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


def model_rows(pattern: str = "*", family: Optional[str] = None, macs: bool = True, img_size: int = 224):
    """One row per model: name, family, params (M), paper params, GMACs, paper GMACs, paper top-1, note."""
    import torch

    from sofa.models import create_model, get_entry, list_models
    from sofa.models.flops import count_params, model_macs

    rows = []
    for name in list_models(pattern, family):
        entry = get_entry(name)
        with torch.device("meta"):  # parameters only: no memory, no init time
            model = create_model(name)
        params = count_params(model) / 1e6
        paper = entry.paper
        gmacs = f"{model_macs(name, img_size) / 1e9:.2f}" if macs else "-"
        pp = paper.get("params")
        rows.append([
            name, entry.family, f"{params:.2f}", f"{pp}" if pp is not None else "-",
            (f"{(params - pp) / pp * 100:+.1f}%" if pp else "-"), gmacs,
            f"{paper['macs']}" if paper.get("macs") is not None else "-",
            f"{paper['top1']}" if paper.get("top1") is not None else "-", paper.get("note", ""),
        ])
        del model
    return rows


HEADER = ["model", "family", "params (M)", "paper (M)", "Δ", "GMACs", "paper GMACs", "paper top-1", "note"]


def models_command(args) -> int:
    import torch

    with torch.no_grad():  # a context, not a global switch: the command also runs inside other programs
        rows = model_rows(args.pattern, args.family, not args.no_macs, args.img_size)
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    header = list(HEADER)
    if args.img_size != 224:
        header[5] = f"GMACs@{args.img_size}"
    print(_table(rows, header, args.markdown))
    return 0


def convert_command(args) -> int:
    """Write ``args.out`` with metadata (model, task, num_classes) that ``sofa predict / eval / train
    --checkpoint`` read, so the converted file needs no more options. Every failure is one line, exit code 1."""
    from sofa.checkpoint import save_weights
    from sofa.models import create_model, get_entry
    from sofa.models.flops import count_params
    from sofa.train.errors import UserError

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
    print(f"wrote {args.out}: {args.model}, {count_params(inner) / 1e6:.2f}M parameters, "
          f"{meta['num_classes']} classes")
    return 0
