"""Options of ``sofa train`` / ``sofa eval``: one table of defaults, config files, and their precedence.

Precedence, highest first: the command line; the ``--config`` file (YAML or JSON, keys as the long option names
with ``-`` or ``_``); the saved config of a ``--resume``d run; the task's data-dependent profile (e.g. the digits
defaults); the task's option defaults; the loop defaults below. Every option is registered with
``default=None`` so that "given on the command line" can be told from "left at its default".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sofa.errors import UserError

#: the most data-loader workers a rank starts by default: beyond this, more processes rarely feed a GPU faster
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Data-loader workers per rank by default: the CPUs this process may use (its affinity: what ``taskset``,
    SLURM or a container grant), at most :data:`MAX_DEFAULT_WORKERS`, shared among the ranks that torchrun
    starts on this machine (``LOCAL_WORLD_SIZE``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cpus = os.cpu_count() or 1
    local_ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return min(cpus, MAX_DEFAULT_WORKERS) // local_ranks


# The loop's options and their defaults: the papers' ImageNet recipe (AdamW, cosine with warm-up, 300 epochs).
LOOP_DEFAULTS: dict[str, Any] = dict(
    task="classification",
    model="soft_tiny",
    data="digits",
    output=None,
    resume=None,
    epochs=300,
    batch_size=128,
    lr=1e-3,
    min_lr=1e-5,
    warmup_lr=1e-6,
    warmup_epochs=5,
    sched="cosine",
    opt="adamw",
    momentum=0.9,
    weight_decay=0.05,
    clip_grad=None,
    clip_mode="norm",
    drop_path=0.1,
    img_size=224,
    workers=default_workers(),
    seed=0,
    device="auto",
    amp="auto",
    channels_last=False,
    compile=False,
    grad_checkpointing=False,
    ema=False,
    ema_decay=0.9998,
    eval_every=1,
    save_every_steps=0,
    log_interval=20,
    progress="auto",
    threads=0,
)


def add_loop_args(p: argparse.ArgumentParser) -> None:
    """The loop's options, in four groups of ``--help``; each registered with ``default=None``."""
    _add_run_args(p)
    _add_schedule_args(p)
    _add_speed_args(p)
    _add_output_args(p)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = LOOP_DEFAULTS
    g = p.add_argument_group("run")
    g.add_argument(
        "--config", default=None, metavar="FILE", help="YAML/JSON file of options (keys = long option names)"
    )
    g.add_argument("--task", default=None, help=f"task (default {d['task']})")
    g.add_argument(
        "--model",
        default=None,
        help="model name (default: soft_tiny; soft_mini on digits; any sofa model or timm architecture)",
    )
    g.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="'digits' (bundled, default) or an image folder with train/<class>/ and val/<class>/",
    )
    g.add_argument(
        "--output", "-o", default=None, metavar="DIR", help="run directory (default runs/<model>-<data>-<time>)"
    )
    g.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last.pt")
    g.add_argument("--seed", type=int, default=None, help=f"random seed (default {d['seed']})")
    g.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument(
        "--workers",
        "-j",
        type=int,
        default=None,
        help=f"data loader processes per rank (default: the CPUs this process may use, at most "
        f"{MAX_DEFAULT_WORKERS}, divided among the ranks on this machine: {d['workers']} here; "
        f"digits 1)",
    )
    g.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; digits 1)"
    )


def _add_schedule_args(p: argparse.ArgumentParser) -> None:
    d = LOOP_DEFAULTS
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("schedule and optimiser")
    g.add_argument("--epochs", type=int, default=None, help=f"(default {d['epochs']}; digits 15)")
    g.add_argument(
        "--batch-size", "-b", type=int, default=None, help=f"per process (default {d['batch_size']}; digits 64)"
    )
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d['lr']}; digits 2e-3)")
    g.add_argument("--min-lr", type=float, default=None, help=f"end of the cosine (default {d['min_lr']})")
    g.add_argument(
        "--warmup-epochs", type=float, default=None, help=f"linear warm-up (default {d['warmup_epochs']}; digits 1)"
    )
    g.add_argument("--warmup-lr", type=float, default=None, help=f"warm-up start (default {d['warmup_lr']})")
    g.add_argument("--sched", default=None, help=f"timm scheduler: cosine, step, plateau, ... (default {d['sched']})")
    g.add_argument("--opt", default=None, help=f"timm optimiser name (default {d['opt']})")
    g.add_argument("--momentum", type=float, default=None, help=f"for SGD-type optimisers (default {d['momentum']})")
    g.add_argument(
        "--weight-decay",
        "--wd",
        type=float,
        default=None,
        help=f"(default {d['weight_decay']}; none on norms/biases/no_weight_decay())",
    )
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping threshold (default off)")
    g.add_argument("--clip-mode", default=None, choices=("norm", "value", "agc"), help="(default norm)")
    g.add_argument(
        "--drop-path", type=float, default=None, help=f"stochastic depth rate (default {d['drop_path']}; digits 0)"
    )
    g.add_argument("--ema", action=B, default=None, help="keep an EMA of the weights (evaluated too)")
    g.add_argument("--ema-decay", type=float, default=None, help=f"(default {d['ema_decay']})")


def _add_speed_args(p: argparse.ArgumentParser) -> None:
    d = LOOP_DEFAULTS
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("speed and memory")
    g.add_argument(
        "--img-size", type=int, default=None, help=f"training/eval image size (default {d['img_size']}; digits 32)"
    )
    g.add_argument(
        "--amp",
        default=None,
        choices=("auto", "none", "bf16", "fp16"),
        help="mixed precision: auto = bf16 on GPUs that have it (else fp16), fp32 on the CPU",
    )
    g.add_argument("--channels-last", action=B, default=None, help="channels-last memory format")
    g.add_argument("--compile", action=B, default=None, help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action=B, default=None, help="recompute activations in backward")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    d = LOOP_DEFAULTS
    g = p.add_argument_group("output")
    g.add_argument("--eval-every", type=int, default=None, help="evaluate every N epochs (default 1; the last always)")
    g.add_argument(
        "--save-every-steps",
        type=int,
        default=None,
        help="also write last.pt every N steps (default 0: per epoch; SIGUSR1 saves on demand)",
    )
    g.add_argument(
        "--log-interval", type=int, default=None, help=f"steps between log lines (default {d['log_interval']})"
    )
    g.add_argument(
        "--progress",
        default=None,
        choices=("auto", "bar", "log", "none"),
        help="auto: a bar on a terminal, log lines otherwise",
    )


class TaskArgs:
    """Adds a task's options to a parser, recording their defaults (per task) and registering ``None``.

    Tasks may share an option (the LRA tasks all take ``--steps``): the TaskArgs of one parser share
    ``registered`` (option string → action), and a flag already there is recorded, not added again.
    """

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        task_name: str,
        title: str,
        registered: dict[str, argparse.Action] | None = None,
    ):
        self.parser = parser
        self.group = parser.add_argument_group(title)
        self.task_name = task_name
        self.defaults: dict[str, Any] = {}
        self.registered = {} if registered is None else registered

    def add_argument(self, *flags, **kw):
        default = kw.pop("default", None)
        if kw.get("action") in ("store_true",):
            default = bool(default)
        elif kw.get("action") in ("store_false",):
            default = True if default is None else default
        existing = [f for f in flags if f in self.registered]
        if existing:
            action = self.registered[existing[0]]
        else:
            action = self.group.add_argument(*flags, default=None, **kw)
            self.registered.update(dict.fromkeys(action.option_strings or flags, action))
        self.defaults[action.dest] = default
        return action

    def add_argument_group(self, *a, **kw):  # tasks may group options: flatten into ours
        return self

    def add_mutually_exclusive_group(self, *a, **kw):
        return self


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:
        raise UserError(f"cannot parse config file {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(args: argparse.Namespace, known: set[str], layers: list[tuple[str, dict[str, Any]]]) -> argparse.Namespace:
    """Fill every option left ``None`` on the command line from ``layers`` (highest precedence first)."""
    out = vars(args).copy()
    for name, layer in layers:
        unknown = sorted(k for k in layer if k not in known)
        if unknown and name.startswith("config"):
            raise UserError(f"{name} has unknown option(s): {', '.join(unknown)}")
    for key in known:
        if out.get(key) is not None:
            continue
        for _, layer in layers:
            if key in layer and layer[key] is not None:
                out[key] = layer[key]
                break
    for k in ("scale", "ratio"):
        if isinstance(out.get(k), str):
            out[k] = tuple(float(t) for t in out[k].replace(",", " ").split())
        elif isinstance(out.get(k), list):
            out[k] = tuple(float(t) for t in out[k])
    return argparse.Namespace(**out)


def config_to_dict(cfg: argparse.Namespace) -> dict[str, Any]:
    """The run's options as plain JSON/YAML-able values (no functions)."""
    out = {}
    for k, v in sorted(vars(cfg).items()):
        if callable(v) or k in ("func", "command"):
            continue
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out
