"""The ``sofa`` command line: a thin dispatcher over the library.

Each area of the library that has commands exposes ``register(subparsers)`` in its own ``cli`` module, which
adds its sub-commands with ``set_defaults(func=...)``; ``func(args)`` returns an exit code (or None for 0).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute sub-commands, in the order they appear in ``sofa --help``.
COMMAND_MODULES = (
    "sofa.train.cli",  # train, eval, predict
    "sofa.models.cli",  # models, convert
    "sofa.bench.cli",  # bench
    "sofa.dense.cli",  # data
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sofa",
        description="sofa: softmax-free, linear-cost vision backbones (SOFT, SeTformer, PoolFormer).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # an area not installed in this build: its commands are absent
            if err.name is not None and name.startswith(err.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    code = args.func(args)
    return 0 if code is None else int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
