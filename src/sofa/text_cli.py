"""``sofa pretrain`` (masked-language pretraining, ``sofa train --task mlm``) and ``sofa tokenizer train``."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, Sequence

from sofa.errors import UserError

PRETRAIN_EPILOG = """\
examples:
  sofa pretrain --steps 2000                                      # text_mini_set on python-docs, byte tokens
  sofa tokenizer train python-docs --vocab 4096 --out tok.json
  sofa pretrain --corpus my.txt --tokenizer tok.json --model text_small_soft --steps 20000 -b 64
  sofa train --resume runs/text_mini_set-python-docs-20250101-120000
`sofa pretrain ...` is `sofa train --task mlm ...`: every option of sofa train applies (progress, metrics.jsonl,
curves, checkpoints, --resume, torchrun). The run directory keeps tokenizer.json beside the weights.
"""


def register(subparsers) -> None:
    _register_pretrain(subparsers)
    _register_tokenizer(subparsers)


def _register_pretrain(subparsers) -> None:
    from sofa.train.cli import _guard, _known
    from sofa.train.config import TaskArgs, add_loop_args
    from sofa.train.pretrain import MLMTask

    p = subparsers.add_parser(
        "pretrain",
        help="masked-language pretraining of a text encoder (sofa train --task mlm)",
        description="Pretrain a text encoder (text_* models) as a masked language model on text files or the "
        "built-in python-docs corpus.",
        epilog=PRETRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ta = TaskArgs(p, "mlm", "pretraining (mlm) options")
    MLMTask.add_args(ta)
    add_loop_args(p)
    helps = {
        "model": "text model (default text_mini_set; `sofa models --family text` lists them)",
        "data": "one text file or python-docs (default python-docs; --corpus takes several)",
        "task": argparse.SUPPRESS,  # always mlm
    }
    for action in p._actions:  # the loop's options, described for pretraining
        if action.dest in helps:
            action.help = helps[action.dest]
    known = _known(p)
    p.set_defaults(func=_guard(functools.partial(cmd_pretrain, known=known, task_defaults={"mlm": ta.defaults})))


def cmd_pretrain(
    args: argparse.Namespace, known: set[str], task_defaults: dict[str, dict[str, Any]], callbacks: Sequence = ()
) -> int:
    """``sofa pretrain``: ``sofa train --task mlm`` with the same options."""
    from sofa.train.cli import cmd_train

    if args.task not in (None, "mlm"):
        raise UserError(f"sofa pretrain runs the mlm task; for --task {args.task} use sofa train")
    args.task = "mlm"
    if args.corpus and args.data is None:
        args.data = "python-docs" if list(args.corpus) == ["python-docs"] else str(args.corpus[0])
    return cmd_train(args, known=known, task_defaults=task_defaults, callbacks=callbacks)


def _register_tokenizer(subparsers) -> None:
    from sofa.train.cli import _guard

    p = subparsers.add_parser("tokenizer", help="train a WordPiece or BPE tokenizer (tokenizer.json)")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="COMMAND")
    t = sub.add_parser(
        "train",
        help="train a tokenizer on text files",
        description="Train a tokenizer with BERT's normalisation (lower case, accents stripped) and "
        "pre-tokenisation, and the special tokens [PAD] [CLS] [SEP] [MASK] [UNK] as ids 0-4; writes a Hugging "
        "Face tokenizer.json (needs the tokenizers package: pip install 'sofa[text]').",
    )
    t.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files, or python-docs (built in)")
    t.add_argument("--vocab", type=int, default=8192, help="vocabulary size, special tokens included (default 8192)")
    t.add_argument("--out", "-o", required=True, metavar="FILE", help="the tokenizer.json to write")
    t.add_argument("--kind", default="wordpiece", choices=("wordpiece", "bpe"), help="(default wordpiece)")
    t.add_argument("--min-frequency", type=int, default=2, help="rarest pair merged (default 2)")
    t.set_defaults(func=_guard(cmd_tokenizer_train))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from sofa.data.text import read_corpus, train_tokenizer

    tok = train_tokenizer(args.files, args.vocab, args.out, kind=args.kind, min_frequency=args.min_frequency)
    sample = read_corpus(args.files)[:2000]
    n_chars, n_ids = len(sample), max(len(tok.encode(sample)), 1)
    print(
        f"wrote {Path(args.out)}: {args.kind}, {tok.vocab_size} ids ([PAD] {tok.pad_id}, [CLS] {tok.cls_id}, "
        f"[SEP] {tok.sep_id}, [MASK] {tok.mask_id}); {n_chars / n_ids:.2f} characters per token on the corpus's "
        f"first {n_chars} characters"
    )
    return 0
