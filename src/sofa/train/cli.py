"""``sofa train``, ``sofa eval`` and ``sofa predict``."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sofa.checkpoint import RUN_WEIGHTS
from sofa.errors import UserError

if TYPE_CHECKING:
    from sofa.train.trainer import Callback

TRAIN_EPILOG = """\
examples:
  sofa train                                   # SOFT on the bundled digits, ~95%+ test accuracy on 2 CPU cores
  sofa train --data /data/imagenet --model soft_small -b 128 --epochs 300 --ema --amp bf16
  torchrun --nproc_per_node=8 -m sofa train --data /data/imagenet --model soft_small --config recipe.yaml
  sofa train --resume runs/soft_tiny-digits-20250101-120000
options come from (highest first): the command line, --config FILE, the resumed run, the data's defaults, the
ImageNet recipe of the papers (AdamW, cosine, warm-up, label smoothing, Mixup/CutMix, RandAugment, random
erasing, drop path). `kill -USR1 PID` writes a checkpoint at the next step. SIGTERM (timeout, scancel, systemd)
and Ctrl-C stop the run after the current step, writing a checkpoint there; `sofa train --resume RUN_DIR`
continues it. A run stopped so exits with 128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C); a second
Ctrl-C quits without saving. One run at a time may write a run directory (it holds RUN_DIR/.lock).
"""


def _rank_prefix() -> str:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return f"[rank {os.environ.get('RANK', '0')}] " if ws > 1 else ""


def _guard(fn: Callable[..., int | None]) -> Callable[..., int]:
    """``fn(args, **kwargs)`` whose Ctrl-C becomes one line on stderr and exit code 130 (user errors are
    :func:`sofa.cli.main`'s)."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace, **kwargs: Any) -> int:
        try:
            code = fn(args, **kwargs)
            return 0 if code is None else int(code)
        except KeyboardInterrupt:
            print(f"{_rank_prefix()}interrupted", file=sys.stderr, flush=True)
            return 130

    return run


def _add_task_args(p: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """Every registered task's options; returns {task: {dest: default}}."""
    from sofa.train.config import TaskArgs
    from sofa.train.task import get_task, list_tasks

    per_task: dict[str, dict[str, Any]] = {}
    registered: dict[str, argparse.Action] = {}
    for name in list_tasks():
        cls = get_task(name)
        ta = TaskArgs(p, name, f"{name} options", registered)
        cls.add_args(ta)
        per_task[name] = ta.defaults
    return per_task


def _known(p: argparse.ArgumentParser, positionals: Sequence[str] = ()) -> set[str]:
    """The option names ``p`` fills in: those of a parse of only its required ``positionals`` (every option
    is registered with a default, ``None`` where not given)."""
    return set(vars(p.parse_known_args(list(positionals))[0]))


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_predict(subparsers)
    from sofa.train.compare import register as register_compare

    register_compare(subparsers)


def _register_train(subparsers) -> None:
    from sofa.train.config import add_loop_args

    p = subparsers.add_parser(
        "train",
        help="train a model (default: SOFT on the bundled digits)",
        description="Train a model. With no arguments: a SOFT model on scikit-learn's digits, in minutes on a CPU.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_loop_args(p)
    task_defaults = _add_task_args(p)
    p.set_defaults(func=_guard(functools.partial(cmd_train, known=_known(p), task_defaults=task_defaults)))


def _register_eval(subparsers) -> None:
    e = subparsers.add_parser(
        "eval",
        help="top-1/top-5 and loss of a checkpoint on a dataset (printed and written as JSON)",
        description="Evaluate a checkpoint (a run directory, .safetensors, last.pt or an original release .pth) on "
        "a dataset: by default the data it was trained on (its validation split). The metrics are "
        "printed first, with the weights they score; then they are written as JSON.",
    )
    e.add_argument(
        "checkpoint",
        help="run directory, .safetensors weights, a last.pt training state or an original release .pth (with --model)",
    )
    e.add_argument(
        "--weights",
        default=None,
        choices=tuple(RUN_WEIGHTS),
        help="which weights of a run directory: best (default; the final ones where no best was saved), final, or ema",
    )
    e.add_argument(
        "--data", default=None, help="'digits' or an image folder with val/<class>/ (default: the training data)"
    )
    e.add_argument(
        "--split",
        default=None,
        choices=("val", "test"),
        help="the folder of --data to measure: val/ (default) or test/; no train/ is needed",
    )
    e.add_argument("--task", default=None, help="(default: the checkpoint's)")
    e.add_argument(
        "--model",
        default=None,
        help="(default: the checkpoint's; needed for an original release checkpoint, which does not say)",
    )
    e.add_argument("--img-size", type=int, default=None, help="(default: the checkpoint's)")
    e.add_argument("--batch-size", "-b", type=int, default=None, help="(default 128)")
    e.add_argument("--workers", "-j", type=int, default=None, help="(default 4)")
    e.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    e.add_argument("--amp", default=None, choices=("auto", "none", "bf16", "fp16"), help="(default auto)")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    e.add_argument(
        "--seed", type=int, default=None, help="seed of the digits train/test split (default: the checkpoint's)"
    )
    e.add_argument("--progress", default=None, choices=("auto", "bar", "log", "none"))
    e.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE",
        help="JSON file for the metrics (default: eval_<data>[_<split>][_<weights>].json beside the "
        "checkpoint). Where it cannot be written the metrics are still printed, with a warning; "
        "the exit code is then 1 for a FILE given here, 0 for the default file (a checkpoint in a "
        "read-only folder is normal)",
    )
    eval_task_defaults = _add_task_args(e)
    e.set_defaults(
        func=_guard(functools.partial(cmd_eval, known=_known(e, ["CHECKPOINT"]), task_defaults=eval_task_defaults))
    )


def _register_predict(subparsers) -> None:
    q = subparsers.add_parser(
        "predict",
        help="top-k classes with probabilities for image files",
        description="Classify image files with a trained checkpoint.",
    )
    q.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    q.add_argument(
        "--checkpoint",
        "-c",
        default=None,
        help="run directory, .safetensors or last.pt (default: the newest run under runs/)",
    )
    q.add_argument(
        "--model",
        default=None,
        help="model name (default: the checkpoint's; needed for an original release checkpoint)",
    )
    q.add_argument("--topk", "-k", type=int, default=5, help="classes per image (default 5)")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    q.add_argument("--batch-size", "-b", type=int, default=32)
    q.add_argument(
        "--json", default=None, metavar="FILE", help="also write the predictions as JSON ('-' = stdout only JSON)"
    )
    q.set_defaults(func=_guard(cmd_predict))


# ------------------------------------------------------------------------------------------------ train
def resolve_train_config(args: argparse.Namespace, known: set[str], task_defaults: dict[str, dict[str, Any]]):
    from sofa.train.config import LOOP_DEFAULTS, load_config_file, resolve
    from sofa.train.task import get_task

    file_cfg = load_config_file(args.config) if args.config else {}
    resume_cfg: dict[str, Any] = {}
    if args.resume:
        from sofa.checkpoint import load_training_state

        resume_cfg = dict(load_training_state(args.resume).get("config") or {})
        for k in ("resume", "output", "config"):
            resume_cfg.pop(k, None)
    checkpoint_layer = _checkpoint_model_layer(args, file_cfg, resume_cfg)
    task_name = args.task or file_cfg.get("task") or resume_cfg.get("task") or LOOP_DEFAULTS["task"]
    task_cls = get_task(task_name)
    partial = resolve(
        args, known, [("config file " + str(args.config), file_cfg), ("resumed run", resume_cfg), checkpoint_layer]
    )
    partial.task = task_name
    # the data decides a profile (e.g. digits) — look at data as resolved so far
    defaults_of_task = dict(task_defaults.get(task_name, {}), **task_cls.defaults)
    if partial.data is None:  # the task's default data (e.g. shapes for dense tasks), else the loop's (digits)
        partial.data = defaults_of_task.get("data") or LOOP_DEFAULTS["data"]
    profile = task_cls.profile(partial) if hasattr(task_cls, "profile") else {}
    layers = [
        ("config file " + str(args.config), file_cfg),
        ("resumed run", resume_cfg),
        checkpoint_layer,
        ("data profile", profile),
        ("task defaults", defaults_of_task),
        ("loop defaults", LOOP_DEFAULTS),
    ]
    cfg = resolve(partial, known, layers)
    _validate(cfg)
    return cfg


def _checkpoint_model_layer(
    args: argparse.Namespace, file_cfg: dict[str, Any], resume_cfg: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Fine-tuning from ``--checkpoint`` with no model named anywhere: the model the checkpoint says it holds
    (below the command line, the config file and a resumed run; above the data's and the task's defaults)."""
    checkpoint = getattr(args, "checkpoint", None) or file_cfg.get("checkpoint")
    if not checkpoint or args.model or file_cfg.get("model") or resume_cfg.get("model"):
        return ("checkpoint", {})
    from sofa.checkpoint import read_checkpoint

    _, meta = read_checkpoint(checkpoint)
    model = meta.get("model") or (meta.get("config") or {}).get("model")
    return (f"checkpoint {checkpoint}", {"model": model} if model else {})


def _validate(cfg) -> None:
    def positive(name, allow_zero=False):
        v = getattr(cfg, name, None)
        if v is None:
            return
        if v < 0 or (v == 0 and not allow_zero):
            raise UserError(f"--{name.replace('_', '-')} must be {'≥ 0' if allow_zero else '> 0'}, got {v}")

    for n in ("epochs", "batch_size", "img_size", "lr"):
        positive(n)
    for n in ("workers", "weight_decay", "warmup_epochs", "drop_path", "save_every_steps", "log_interval"):
        positive(n, allow_zero=True)
    if cfg.drop_path is not None and cfg.drop_path >= 1:
        raise UserError(f"--drop-path must be < 1, got {cfg.drop_path}")
    if getattr(cfg, "aa", None):  # before anything is built or written: a typo costs no run directory
        from sofa.data.transforms import check_auto_augment

        check_auto_augment(cfg.aa)


def cmd_train(
    args: argparse.Namespace,
    known: set[str],
    task_defaults: dict[str, dict[str, Any]],
    callbacks: Sequence[Callback] = (),
) -> int:
    """``sofa train``; ``callbacks`` hook into the run (see :class:`sofa.train.trainer.Callback`)."""
    from sofa.train.loop import train
    from sofa.train.stopping import exit_code

    cfg = resolve_train_config(args, known, task_defaults)
    for k in ("func",):
        if hasattr(cfg, k):
            delattr(cfg, k)
    from sofa.train.task import get_task

    code = get_task(cfg.task).run_instead(cfg, callbacks)  # e.g. a suite of runs (--task glue --glue-task all)
    if code is not None:
        return code
    result = train(cfg, callbacks)
    return exit_code(result.stopped_by) if result.stopped_by else 0


# ------------------------------------------------------------------------------------------------ eval
def _refuse_backbone(path: Path, meta: dict[str, Any]) -> None:
    if meta.get("features_only"):
        raise UserError(
            f"{path} holds a backbone without classifier (sofa convert --features), for dense tasks: "
            f"sofa train --task segmentation|detection --backbone-checkpoint {path}"
        )


def resolve_eval_config(
    args: argparse.Namespace,
    known: set[str],
    task_defaults: dict[str, dict[str, Any]],
    path: Path,
    sd: dict[str, Any],
    meta: dict[str, Any],
) -> argparse.Namespace:
    """``sofa eval``'s options for the checkpoint at ``path`` (its state dict ``sd``, its metadata ``meta``):
    the command line, then the checkpoint's saved config, the task's defaults and the evaluation defaults."""
    from sofa.train.config import LOOP_DEFAULTS, resolve
    from sofa.train.factory import checkpoint_num_classes
    from sofa.train.task import get_task

    saved = dict(meta.get("config") or {})
    for k in ("resume", "output", "config", "checkpoint", "func"):
        saved.pop(k, None)
    if meta.get("model"):
        saved.setdefault("model", meta["model"])
    task_name = args.task or meta.get("task") or saved.get("task") or LOOP_DEFAULTS["task"]
    task_cls = get_task(task_name)
    model = args.model or saved.get("model")
    if not model:
        raise UserError(
            f"{path} does not say which model it holds (an original release checkpoint, or a file "
            f"not written by sofa): pass --model NAME (`sofa models` lists them)"
        )
    if meta.get("num_classes"):
        saved["num_classes"] = meta["num_classes"]
    elif not saved.get("num_classes") and task_name == "classification":
        saved["num_classes"] = checkpoint_num_classes(model, sd)
    if args.split not in (None, "val") and task_name != "classification":
        raise UserError(f"--split {args.split} applies to image folders of the classification task, not {task_name}")
    eval_defaults = dict(LOOP_DEFAULTS, batch_size=128, amp="auto", progress="auto")
    layers = [
        ("checkpoint", saved),
        ("task defaults", dict(task_defaults.get(task_name, {}), **task_cls.defaults)),
        ("defaults", eval_defaults),
    ]
    all_known = known | set(saved) | set(LOOP_DEFAULTS)
    cfg = resolve(args, all_known, layers)
    cfg.task = task_name
    cfg.split = args.split or "val"
    cfg.checkpoint = None  # the weights come from the evaluated checkpoint, not the run's initial weights
    if meta.get("classes"):
        cfg.classes = list(meta["classes"])
    return cfg


def cmd_eval(args: argparse.Namespace, known: set[str], task_defaults: dict[str, dict[str, Any]]) -> int:
    from sofa.checkpoint import atomic_write_text, describe_weights, read_checkpoint, resolve_checkpoint
    from sofa.train.loop import evaluate_checkpoint

    path = resolve_checkpoint(args.checkpoint, args.weights)
    sd, meta = read_checkpoint(path)
    _refuse_backbone(path, meta)
    cfg = resolve_eval_config(args, known, task_defaults, path, sd, meta)
    data = str(cfg.data or "digits")
    weights = describe_weights(path, meta)
    metrics = evaluate_checkpoint(cfg, str(path), meta, sd)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    shown = "  ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k not in ("seconds",)
    )
    print(f"{cfg.model} on {data} ({cfg.split}): {shown}  ({metrics['seconds']:.1f}s)")
    others = [w for w, f in RUN_WEIGHTS.items() if (path.parent / f).is_file() and path.name != f]
    choose = f"; --weights {' / '.join(others)} for the others" if Path(args.checkpoint).is_dir() and others else ""
    print(f"scored {path}" + (f": the {weights}" if weights != path.name else "") + choose, flush=True)
    stem = "digits" if data == "digits" else Path(data).name or "data"
    suffix = "".join(f"_{x}" for x in (cfg.split if cfg.split != "val" else None, args.weights) if x)
    out = Path(args.output) if args.output else path.parent / f"eval_{stem}{suffix}.json"
    record = {
        "checkpoint": str(path),
        "weights": weights,
        "model": cfg.model,
        "task": cfg.task,
        "data": data,
        "split": cfg.split,
        "img_size": cfg.img_size,
        "metrics": metrics,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    except OSError as err:
        print(
            f"warning: could not write {out}: {err.strerror or err}; the metrics above are complete"
            + ("" if args.output else " (write them elsewhere with -o FILE)"),
            file=sys.stderr,
        )
        return 1 if args.output else 0
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------------ predict
def _newest_run() -> Path | None:
    runs = Path("runs")
    if not runs.is_dir():
        return None
    weights = ("best.safetensors", "model.safetensors")
    cands = [p for p in runs.iterdir() if p.is_dir() and any((p / n).is_file() for n in weights)]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def cmd_predict(args: argparse.Namespace) -> int:
    from sofa.checkpoint import atomic_write_text, read_checkpoint, resolve_checkpoint
    from sofa.train.classification import predict_images
    from sofa.train.distributed import setup_distributed, teardown_distributed
    from sofa.train.factory import checkpoint_num_classes, create_classifier, load_weights

    if args.topk < 1:
        raise UserError(f"--topk must be ≥ 1, got {args.topk}")
    ck = args.checkpoint
    if ck is None:
        ck = _newest_run()
        if ck is None:
            raise UserError("no --checkpoint given and no run under runs/: train one with `sofa train` first")
        print(f"using the newest run, {ck}", file=sys.stderr)
    path = resolve_checkpoint(ck)
    sd, meta = read_checkpoint(path)
    _refuse_backbone(path, meta)
    if meta.get("task", "classification") != "classification":
        raise UserError(f"sofa predict classifies images; {path} holds a {meta.get('task')} model (use sofa eval)")
    cfg = meta.get("config") or {}
    name = args.model or meta.get("model") or cfg.get("model")
    if not name:
        raise UserError(
            f"{path} does not say which model it holds (an original release checkpoint, or a file "
            f"not written by sofa): pass --model NAME (`sofa models` lists them)"
        )
    classes = meta.get("classes")
    num_classes = int(
        meta.get("num_classes") or (len(classes) if classes else 0) or checkpoint_num_classes(name, sd) or 0
    )
    if not num_classes:
        raise UserError(f"{path} has no classifier to predict with (a backbone without a head?)")
    d = setup_distributed(args.device)  # the device, or one line saying why it cannot be used
    try:
        model = create_classifier(name, num_classes=num_classes, img_size=meta.get("img_size"))
        load_weights(model, sd, f"checkpoint {path}", checkpoint_model=meta.get("model"))
        dc = meta.get("data_config")
        if not dc:
            from sofa.data.transforms import resolve_data_config

            dc = resolve_data_config(model, meta.get("img_size"))
        dc["input_size"] = tuple(dc["input_size"])
        results = predict_images(model, list(args.images), dc, classes, args.topk, d.device, args.batch_size)
    finally:
        teardown_distributed(d)
    if args.json == "-":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["image"])
            if "error" in r:
                print(f"  error: {r['error']}")
                continue
            for i, t in enumerate(r["top"], 1):
                print(f"  {i}. {t['class']:<20} {t['prob']:.4f}")
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
    return 1 if any("error" in r for r in results) else 0
