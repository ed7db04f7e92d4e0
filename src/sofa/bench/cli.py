"""``sofa bench mixers`` and ``sofa bench models``: benchmarks that print numbers (not timed tests).

sofa bench mixers --json docs/bench_mixers_cpu.json --plot docs/bench_mixers_cpu.png
sofa bench models --json docs/bench_models_cpu.json
sofa bench mixers --quick            # tiny sizes, in-process: checks the harness in seconds
sofa bench mixers --seq 1024,4096,16384,65536   # 1-D sequences, the LRA models' mixers
sofa bench text --seq 512,2048,8192 --threads 2   # one MLM training step of text_mini_* per length
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, List

from sofa.bench import measure, memory

__all__ = ["register", "run_mixers", "run_models"]


def _ints(text: str) -> List[int]:
    try:
        return [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="write every measurement with its settings and the machine to PATH")
    p.add_argument("--plot", metavar="PATH", help="draw the results to PATH (PNG)")
    p.add_argument("--markdown", metavar="PATH", help="write the result tables as Markdown to PATH")
    p.add_argument("--sizes", type=_ints, metavar="S,S,...", help="image sides (N = S² tokens for mixers)")
    p.add_argument("--repeats", type=int, help="timed runs per case after warm-up (median reported)")
    p.add_argument("--warmup", type=int, help="untimed runs before timing")
    p.add_argument("--quick", action="store_true", help="tiny sizes, two runs, in-process: checks the harness")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (CPU/GPU autocast); models take a list")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        default=None,
        help="measure in this process instead of a fresh process per case (memory less exact)",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="measure with glibc's default malloc settings, as a Python process has them, instead of the "
        "sofa command's own (freed memory kept for reuse: sofa.keep_freed_memory)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of timed runs per case; slow cases get fewer runs (never below 5 unless one run "
        "alone exceeds it) (default 60)",
    )


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: token mixers against N, whole models against timm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")

    m = sub.add_parser("mixers", help="time and peak memory of each token mixer against the number of tokens")
    _common(m)
    m.add_argument(
        "--mixers",
        type=_names,
        help="cases to run (default: all): pool, soft_stride, soft_bounded, set, "
        "sdpa, softmax_materialized; with --seq: pool, soft, soft_norm, set, "
        "sdpa, softmax_materialized, nystrom",
    )
    m.add_argument(
        "--seq",
        type=_ints,
        nargs="?",
        const=[],
        metavar="L,L,...",
        help="measure 1-D sequences of these lengths (default 1024,4096,16384,65536; --quick 64,256) "
        "with the LRA models' mixers instead of images; nystrom needs the bench extra",
    )
    m.add_argument("--modes", type=_names, default=["inference", "train"], help="inference,train (default both)")
    m.add_argument(
        "--no-flush-compare",
        dest="flush_compare",
        action="store_false",
        help="skip timing each case again with subnormal flushing on",
    )
    m.add_argument(
        "--max-run",
        type=float,
        default=60.0,
        help="skip a size whose one run would take longer than this many seconds, extrapolated from the "
        "previous size (N² for softmax attention, N³ for stride SOFT) (default 60)",
    )
    m.add_argument("--mem-limit", type=float, help="GB; skip cases estimated to need more (default 80%% of free)")
    m.add_argument("--input-scale", type=float, default=1.0, help="standard deviation of the random tokens")
    m.add_argument(
        "--no-pair-slopes",
        dest="pair_slopes",
        action="store_false",
        help="skip re-timing successive sizes of the linear mixers in turn for robust slopes",
    )
    m.set_defaults(func=run_mixers)

    _register_text(sub)

    d = sub.add_parser("models", help="images/s and peak memory of our models and timm's alternatives")
    _common(d)
    d.add_argument(
        "--models",
        type=_names,
        help="models to run; 'timm:NAME' for timm's, 'NAME[key=value;...]' for constructor "
        "arguments, e.g. 'soft_tiny[max_landmarks=49]' (default: ours and timm's alternatives)",
    )
    d.add_argument(
        "--mode",
        choices=("inference", "train"),
        default="inference",
        help="inference: one forward in eval mode; train: a whole training step (forward, cross-entropy, backward, "
        "AdamW), FLOPs of forward and backward (default inference)",
    )
    d.add_argument("--batch", type=int, help="images per batch (default 8 for inference, 32 for train)")
    d.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="MODE",
        help="torch.compile every model (optionally with a mode, e.g. max-autotune)",
    )
    d.add_argument("--channels-last", action="store_true", help="run models and inputs in channels-last layout")
    d.add_argument("--gemm-size", type=int, default=2048, help="side of the square GEMM that sets the peak")
    d.add_argument(
        "--profile",
        action="store_true",
        help="also profile one step of each model (torch.profiler) and say what bounds it",
    )
    d.add_argument(
        "--runtime",
        choices=("pytorch", "onnxruntime"),
        default="pytorch",
        help="onnxruntime: also time each float32 case as an ONNX Runtime CPU session of the exported model, next "
        "to PyTorch's, with as many threads (CPU only; needs the export extra) (default pytorch)",
    )
    d.set_defaults(func=run_models)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])


def _header(args, settings: Dict) -> Dict:
    from sofa.runtime import freed_memory_kept, requested_by_environment

    # set by sofa.cli.main for this process and, through the environment, for the worker processes
    kept = freed_memory_kept() and requested_by_environment()
    settings["malloc"] = (
        "glibc keeps freed memory for reuse (the sofa command's default, sofa.keep_freed_memory)"
        if kept
        else "glibc's default (large freed blocks returned to the system: --default-malloc or "
        "SOFA_KEEP_FREED_MEMORY=0, or a process that is not the sofa command)"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the workers are told the same; the header and JSON say so
    info = measure.machine_info(args.device)
    print(f"sofa bench {args.bench_command}  ({info['date']})")
    print(
        f"machine: {info['host_cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']} with "
        f"{info['torch_threads']} threads"
        + (f", load average {info['load_average'][0]:.2f}" if info.get("load_average") else "")
    )
    for k, v in settings.items():
        print(f"  {k}: {v}")
    return info


def _finish(args, payload: Dict, tables: List[str], plot) -> int:
    text = "\n\n".join(t for t in tables if t)
    print()
    print(text)
    if args.json:
        from sofa.bench.report import write_json

        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


@dataclass(frozen=True)
class _MixerOptions:
    """What ``sofa bench mixers``'s arguments resolve to once the --quick and layout defaults are applied."""

    sequence: bool
    sides: List[int]
    cases: List[str]
    repeats: int
    warmup: int
    isolate: bool


def _mixer_options(args) -> _MixerOptions | str:
    """The resolved options, or the message for a command line that does not fit together."""
    from sofa.bench import mixers as mx

    quick, sequence = args.quick, args.seq is not None
    if sequence and args.sizes:
        return "--seq takes the lengths itself (--seq 1024,4096); --sizes is for images"
    if sequence:
        sides = args.seq or (list(mx.QUICK_LENGTHS) if quick else list(mx.DEFAULT_LENGTHS))
    else:
        sides = args.sizes or (list(mx.QUICK_SIDES) if quick else list(mx.DEFAULT_SIDES))
    table = mx.SEQ_CASES if sequence else mx.CASES
    cases = args.mixers or list(mx.DEFAULT_SEQ_CASES if sequence else mx.DEFAULT_CASES)
    unknown = [c for c in cases if c not in table]
    if unknown:
        return f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(table)}"
    return _MixerOptions(
        sequence=sequence,
        sides=sides,
        cases=cases,
        repeats=args.repeats or (2 if quick else 7),
        warmup=args.warmup if args.warmup is not None else 1,
        isolate=(not quick) if args.isolate is None else args.isolate,
    )


def _mixer_settings(args, opts: _MixerOptions) -> Dict:
    """The settings the header prints and the JSON stores."""
    from sofa.bench import mixers as mx

    sides, sequence = opts.sides, opts.sequence
    table = mx.SEQ_CASES if sequence else mx.CASES
    shape = (
        f"N = {', '.join(f'{n:,}' for n in sides)} tokens in one sequence (1-D)"
        if sequence
        else f"N = S² for S in {sides}"
    )
    return {
        "tokens": f"{shape}; batch 1; C = {mx.DIM}; {mx.HEADS} heads of {mx.DIM // mx.HEADS}",
        "dtype": args.dtype,
        "device": args.device,
        "modes": args.modes,
        "cases": {c: table[c][2] for c in opts.cases},
        "note": (
            "the mixers as the LRA models build them (sofa.models.lra); nystrom: "
            + ("the nystrom-attention package" if mx.nystrom_available() else mx.NYSTROM_MISSING + ", skipped")
        )
        if sequence
        else "SOFT uses its stage-1 settings (landmark stride 8, depthwise 9x9 on V)",
        "timing": f"median of up to {opts.repeats} runs after {opts.warmup} warm-up run(s), at most "
        f"{args.budget:g} s of runs per case; sizes estimated to take more than {args.max_run:g} s per run are "
        "skipped",
        "memory": _memory_method(args.device, opts.isolate),
        "flush_compare": "every case timed with torch.set_flush_denormal off and on, runs interleaved (at least "
        f"{mx.FLUSH_RUNS} rounds within twice the budget, more where runs are short: up to 400 "
        "rounds or about 4 s; ratio = median of on/off over ABBA blocks); not for cases estimated "
        "above 8 s per run, which also get 3 runs at least instead of 5"
        if args.flush_compare
        else "off",
        "isolate": opts.isolate,
        "input_scale": args.input_scale,
    }


def _register_text(sub) -> None:
    from sofa.bench.text import DEFAULT_SEQ, DEFAULT_VOCAB, run_text

    t = sub.add_parser(
        "text",
        help="time and peak memory of one MLM training step (fwd+bwd+AdamW) of the text encoders against N",
    )
    t.add_argument("--seq", type=_ints, metavar="N,N,...", help=f"tokens per sequence (default {DEFAULT_SEQ})")
    t.add_argument("--mixers", type=_names, help="softmax,soft,soft_norm,set,pool (default all)")
    t.add_argument("--size", default="mini", choices=("tiny", "mini", "small", "medium"), help="(default mini)")
    t.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    t.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help=f"MLM vocabulary (default {DEFAULT_VOCAB})")
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    t.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    t.add_argument("--repeats", type=int, default=5, help="timed steps per case after warm-up (default 5)")
    t.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    t.add_argument("--budget", type=float, default=30.0, help="seconds of timed steps per case (at least 2 steps)")
    t.add_argument(
        "--mem-limit", type=float, help="GB; skip softmax cases estimated to need more (default 80%% of free)"
    )
    t.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        default=True,
        help="measure in this process instead of a fresh process per case (memory less exact)",
    )
    t.add_argument("--json", metavar="PATH", help="write every measurement and the machine to PATH")
    t.add_argument("--markdown", metavar="PATH", help="write the table as Markdown to PATH")
    t.set_defaults(func=run_text)


def _memory_method(device: str, isolate: bool) -> str:
    if device == "cuda":
        return memory.MEM_METHOD_CUDA
    return memory.MEM_METHOD_CPU if isolate else memory.MEM_METHOD_CPU.replace("fresh process per case", "in-process")


def _mixer_tables(records: List[Dict], modes: List[str], goals: List[Dict]) -> List[str]:
    """The Markdown tables ``sofa bench mixers`` prints, each under its heading (empty ones left out)."""
    from sofa.bench import report

    sections = [(f"### {mode}: median time / peak extra memory", report.mixer_table(records, mode)) for mode in modes]
    sections += [
        ("### slope of log(time) against log(N), from the medians above", report.slope_table(records)),
        (
            "### slope of log(time) against log(N), the two sizes timed in turn in one process "
            "(median over runs; robust to the machine's changing load)",
            report.pair_slope_table(records),
        ),
        ("### slope of log(peak memory) against log(N)", report.slope_table(records, "peak_mem_bytes")),
        ("### time with subnormal flushing on / off (median of interleaved pairs)", report.flush_table(records)),
        ("### goals", report.goals_table(goals)),
    ]
    return [f"{heading}\n\n{table}" for heading, table in sections if table]


def run_mixers(args) -> int:
    from sofa.bench import mixers as mx
    from sofa.bench import report

    opts = _mixer_options(args)
    if isinstance(opts, str):
        print(f"sofa bench mixers: {opts}", file=sys.stderr)
        return 2
    settings = _mixer_settings(args, opts)
    info = _header(args, settings)
    records = mx.bench_mixers(
        opts.cases,
        opts.sides,
        args.modes,
        repeats=opts.repeats,
        warmup=opts.warmup,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        isolate=opts.isolate,
        budget_s=args.budget,
        max_run_s=args.max_run,
        mem_limit=None if args.mem_limit is None else args.mem_limit * 1e9,
        flush_compare=args.flush_compare,
        input_scale=args.input_scale,
        pair_slopes=args.pair_slopes,
        pair_repeats=6 if args.quick else max(opts.repeats, 22),
        flush_fill_s=0.1 if args.quick else mx.FLUSH_FILL_S,
        layout="sequence" if opts.sequence else "image",
    )
    goals = report.mixer_goals(records)
    payload = {
        "bench": "mixers",
        "command": "sofa " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "settings": settings,
        "machine": info,
        "records": records,
        "slopes": mx.slopes(records),
        "interleaved_slopes": [r for r in records if r.get("bench") == "mixer_pair"],
        "memory_slopes": mx.slopes(records, "peak_mem_bytes"),
        "goals": goals,
    }
    title = f"sofa bench mixers: {info['host_cpu']}, {info['torch_threads']} threads, {args.dtype}, {info['date'][:10]}"
    tables = _mixer_tables(records, args.modes, goals)
    return _finish(args, payload, tables, lambda p: report.plot_mixers(records, p, title))


def run_models(args) -> int:
    from sofa.bench import models as md
    from sofa.bench import report

    refusal = _runtime_refusal(args)
    if refusal:
        print(f"sofa bench models: {refusal}", file=sys.stderr)
        return 2
    plan = _model_plan(args)
    batch = plan["batch"]
    settings = _model_settings(args, plan)
    info = _header(args, settings)
    records = md.bench_models(
        **plan,
        device=args.device,
        threads=args.threads,
        compile=args.compile,
        channels_last=args.channels_last,
        budget_s=args.budget,
        profile=args.profile,
        runtime=args.runtime,
        mode=args.mode,
    )
    goals = report.model_goals(records)
    what = "training step" if args.mode == "train" else "inference"
    tables = [f"### models ({what}, batch {batch})\n\n{report.model_table(records)}"]
    pt = report.profile_table(records)
    if pt:
        tables.append(f"### what bounds each model (torch.profiler, one step: share of its wall time)\n\n{pt}")
    gt = report.goals_table(goals)
    if gt:
        tables.append(f"### goals\n\n{gt}")
    payload = {
        "bench": "models",
        "command": "sofa " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "settings": settings,
        "machine": info,
        "records": records,
        "goals": goals,
    }
    title = (
        f"sofa bench models: {info['host_cpu']}, {info['torch_threads']} threads, batch {batch}, {info['date'][:10]}"
    )
    return _finish(args, payload, tables, lambda p: report.plot_models(records, p, title))


def _runtime_refusal(args) -> str | None:
    """Why ``--runtime`` cannot run here (the export extra missing, a device other than the CPU), or None."""
    if args.runtime != "onnxruntime":
        return None
    if args.mode == "train":
        return "--runtime onnxruntime times inference only: drop it or use --mode inference"
    from sofa.errors import UserError
    from sofa.export import require_export_extra

    try:
        require_export_extra()
    except UserError as err:
        return str(err)
    if args.device != "cpu":
        return "--runtime onnxruntime times ONNX Runtime's CPU session: use --device cpu"
    return None


def _model_plan(args) -> Dict:
    """The cases of ``sofa bench models`` from its options (``--quick``: tiny and in-process), as
    :func:`sofa.bench.models.bench_models` takes them: models, sides, dtypes, batch, repeats, warmup, isolate and
    gemm_size."""
    from sofa.bench import models as md

    quick = args.quick
    batch = args.batch or (32 if args.mode == "train" else 8)
    if args.models:
        models = args.models
    elif quick:
        models = list(md.QUICK_SOFA) + [f"timm:{n}" for n in md.QUICK_TIMM]
    else:
        models = list(md.SOFA_MODELS) + [f"timm:{n}" for n in md.TIMM_MODELS]
    return {
        "models": models,
        "sides": args.sizes or ([32] if quick else list(md.DEFAULT_SIDES)),
        "dtypes": _names(args.dtype),
        "batch": 2 if quick and args.batch is None else batch,
        "repeats": args.repeats or (2 if quick else 5),
        "warmup": args.warmup if args.warmup is not None else (1 if quick else 2),
        "isolate": (not quick) if args.isolate is None else args.isolate,
        "gemm_size": 64 if quick else args.gemm_size,
    }


def _model_settings(args, plan: Dict) -> Dict:
    """The settings the header prints and the JSON stores."""
    return {
        "models": plan["models"],
        "sizes": plan["sides"],
        "batch": plan["batch"],
        "dtypes": plan["dtypes"],
        "device": args.device,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "runtime": "PyTorch, and ONNX Runtime's CPU session of each model exported by sofa.export at the input's "
        "shape, with as many threads (float32 only; not compiled, not channels-last; no peak memory: its arena "
        "fills in the warm-up)"
        if args.runtime == "onnxruntime"
        else "PyTorch",
        "mode": args.mode,
        "timing": (
            "training step (train mode; forward, cross-entropy on random labels, backward, AdamW step)"
            if args.mode == "train"
            else "inference"
        )
        + f", median of up to {plan['repeats']} runs after {plan['warmup']} warm-up run(s)",
        "memory": memory.MEM_METHOD_CUDA if args.device == "cuda" else memory.MEM_METHOD_CPU,
        "flops": "sofa.models.flops counter (FlopCounterMode: every matmul/conv/SDPA), 2 FLOPs per MAC"
        + ("; forward and backward, not the optimizer" if args.mode == "train" else ""),
        "isolate": plan["isolate"],
    }
