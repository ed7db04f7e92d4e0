"""The ``sofa`` command line: a thin dispatcher over the library.

Each area of the library that has commands exposes ``register(subparsers)`` in its own ``cli`` module, which
adds its sub-commands with ``set_defaults(func=...)``; ``func(args)`` returns an exit code (or None for 0).

The command owns its process, so it turns on what the library leaves to the user: glibc keeps freed memory for
reuse (:func:`sofa.keep_freed_memory`; its worker processes inherit it). ``SOFA_KEEP_FREED_MEMORY=0`` in the
environment, or ``sofa bench ... --default-malloc``, keeps glibc's default instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Sequence

# Modules that contribute sub-commands, in the order they appear in ``sofa --help``.
COMMAND_MODULES = (
    "sofa.train.cli",  # train, eval, predict, compare
    "sofa.text_cli",  # pretrain, tokenizer
    "sofa.models.cli",  # models, convert
    "sofa.bench.cli",  # bench
    "sofa.export_cli",  # export
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


def main(argv: list[str] | None = None, callbacks: Sequence[Any] = ()) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``); returns its exit code. ``callbacks``: hooks into the
    run of ``sofa train`` (:class:`sofa.train.trainer.Callback`), for programs and tests that drive it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from sofa.errors import UserError
    from sofa.runtime import ENV, apply_environment

    saved = os.environ.get(ENV)
    if getattr(args, "default_malloc", False):
        os.environ[ENV] = "0"
    else:
        os.environ.setdefault(ENV, "1")  # the user's "0" wins
    try:
        apply_environment()
        code = args.func(args, callbacks=callbacks) if callbacks else args.func(args)
    except BrokenPipeError:  # the reader of our output went away (`sofa models | head`): not an error of ours
        _silence_stdout()
        code = 0
    except UserError as err:  # bad input, any command: one line, no traceback (each rank's under torchrun)
        rank = f"[rank {os.environ.get('RANK', '0')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{rank}error: {err}", file=sys.stderr, flush=True)
        code = err.exit_code
    finally:  # main() may run inside another program (the tests): its environment is left as it was
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
    return 0 if code is None else int(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into the closed pipe raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
