"""Command line of the dense-prediction area: ``sofa data shapes DIR`` (the synthetic dense dataset).

``sofa train --task segmentation|detection`` and ``sofa eval`` come from the training loop's CLI; the tasks
live in :mod:`sofa.dense.tasks`. The high-resolution memory check is ``python -m sofa.dense.highres``.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="write datasets (a synthetic dense-prediction set)",
        description="Write datasets that need no download.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = sub.add_parser(
        "shapes",
        help="coloured shapes on textured backgrounds, as COCO JSON (boxes, masks) and ADE-style PNG label maps",
        description="Write a small synthetic dataset in both dense formats: DIR/images/{training,validation}/*.jpg, "
        "DIR/annotations/{training,validation}/*.png (ADE20K-style label maps: 0 background, 1-3 "
        "circle/square/triangle), DIR/annotations/instances_{training,validation}.json (COCO).",
    )
    s.add_argument("dir", metavar="DIR", help="output folder (created; an existing one must be empty)")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the shapes dataset already in DIR, whole (other folders are never replaced)",
    )
    s.add_argument("--train", type=int, default=200, help="training images (default 200)")
    s.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    s.add_argument("--min-size", type=int, default=96, help="smallest image side (default 96)")
    s.add_argument("--max-size", type=int, default=160, help="largest image side (default 160)")
    s.add_argument("--max-objects", type=int, default=4, help="objects per image, at most (default 4)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_shapes)
    _add_listops(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _shapes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sofa.dense.shapes import write_shapes

    if args.min_size < 32 or args.max_size < args.min_size:
        print(
            f"sofa data shapes: need 32 <= --min-size <= --max-size, got {args.min_size} and {args.max_size}",
            file=sys.stderr,
        )
        return 2
    if args.train < 1 or args.val < 1:
        print("sofa data shapes: --train and --val must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.dir)
    summary = write_shapes(  # a UserError (an unusable DIR) is sofa.cli.main's to print
        out,
        num_train=args.train,
        num_val=args.val,
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    for split in ("training", "validation"):
        s = summary[split]
        print(f"{split}: {s['images']} images, {s['instances']} objects")
    print(f"wrote {out}/images, {out}/annotations (ADE-style PNG label maps and COCO instances_*.json)")
    print(f"try: sofa train --task segmentation --data {out}   |   sofa train --task detection --data {out}")
    return 0


def _add_listops(sub) -> None:
    """``sofa data listops DIR``: the Long Range Arena ListOps files (:mod:`sofa.data.lra.listops`)."""
    s = sub.add_parser(
        "listops",
        help="Long Range Arena ListOps: basic_{train,val,test}.tsv, seeded",
        description="Write LRA's ListOps task: DIR/basic_train.tsv, basic_val.tsv, basic_test.tsv (Source<TAB>Target, "
        "as LRA's generator writes them), drawn with LRA's rules from a seeded random stream. A tree is "
        "kept when min-length < its length in tokens (operators, ']' and digits) < max-length.",
    )
    s.add_argument("dir", metavar="DIR", help="output folder (created; must be new or empty unless --overwrite)")
    s.add_argument("--train", type=int, default=96000, help="training samples (default 96000)")
    s.add_argument("--val", type=int, default=2000, help="validation samples (default 2000)")
    s.add_argument("--test", type=int, default=2000, help="test samples (default 2000)")
    s.add_argument("--max-depth", type=int, default=10, help="deepest level of a tree (default 10)")
    s.add_argument("--max-args", type=int, default=10, help="arguments per operator, at most (default 10)")
    s.add_argument("--min-length", type=int, default=500, help="keep trees longer than this (default 500)")
    s.add_argument("--max-length", type=int, default=2000, help="keep trees shorter than this (default 2000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the three files in a non-empty DIR (anything else there is left alone)",
    )
    s.set_defaults(func=_listops)


def _listops(args: argparse.Namespace) -> int:
    import sys

    from sofa.data.lra.listops import format_summary, write_listops

    try:
        summary = write_listops(
            args.dir,
            num_train=args.train,
            num_val=args.val,
            num_test=args.test,
            seed=args.seed,
            max_depth=args.max_depth,
            max_args=args.max_args,
            min_length=args.min_length,
            max_length=args.max_length,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:  # the partial files are already removed; a UserError is sofa.cli.main's to print
        print("sofa data listops: interrupted; nothing written", file=sys.stderr)
        return 130
    for line in format_summary(summary):
        print(line)
    return 0
