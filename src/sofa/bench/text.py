"""``sofa bench text``: time and peak memory of one masked-language training step of the text encoders.

One case is a ``text_<size>_<mixer>`` model (default ``mini``: 4 layers of width 256) with the MLM head, a batch
of random ids of ``N`` tokens (15% of them labelled) and one step: forward, loss, backward, AdamW update. The
time is the median of the timed steps after warm-up (:func:`sofa.bench.measure.time_call`); the peak memory is
the extra memory at the peak of one more step (:func:`sofa.bench.memory.peak_memory`: the resident-set
high-water mark on the CPU, ``max_memory_allocated`` on a GPU), each case in a fresh process by default (the
parameters, gradients and AdamW's moments are then part of the peak once they exist: the warm-up steps create
them before the measured step, so the reading is the step's activations and temporaries).

Softmax attention's cost grows with N²; a case whose estimated attention memory exceeds ``--mem-limit`` is
skipped (recorded, with the estimate) rather than run out of memory.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import torch

from sofa.bench import measure, memory

__all__ = ["run_case", "bench_text", "DEFAULT_SEQ", "DEFAULT_MIXERS"]

DEFAULT_SEQ = (512, 2048, 8192)
DEFAULT_MIXERS = ("softmax", "soft", "soft_norm", "set", "pool")
#: the vocabulary of the benchmark's MLM head: ``sofa tokenizer train``'s default size
DEFAULT_VOCAB = 8192


def softmax_bytes(size: str, n: int, batch: int) -> int:
    """A rough bound on softmax attention's training memory: the (B, h, N, N) scores, kept for backward along
    with their softmax and dropout mask, in every layer."""
    from sofa.models.text import HEAD_DIM, TEXT_SIZES

    depth, dim = TEXT_SIZES[size]
    return 3 * 4 * batch * (dim // HEAD_DIM) * n * n * depth


def run_case(spec: Dict) -> Dict:
    """One (model, N) case in this process: ``spec`` holds size, mixer, seq, batch, vocab, device, threads,
    repeats, warmup, budget_s."""
    import sofa

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    n, batch, vocab = int(spec["seq"]), int(spec.get("batch", 1)), int(spec.get("vocab", DEFAULT_VOCAB))
    name = f"text_{spec.get('size', 'mini')}_{spec['mixer']}"
    torch.manual_seed(0)
    model = sofa.create_model(name, vocab_size=vocab, max_len=n).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, vocab, (batch, n), device=device)
    labels = torch.where(torch.rand(batch, n, device=device) < 0.15, ids, torch.full_like(ids, -100))

    def step():
        loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    rec: Dict[str, object] = {
        "model": name,
        "size": spec.get("size", "mini"),
        "mixer": spec["mixer"],
        "seq": n,
        "batch": batch,
        "vocab": vocab,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }
    rec.update(measure.time_case(step, spec, device, warmup=1, min_repeats=2))
    rec.update(memory.peak_memory(step, device))
    return rec


def bench_text(
    seqs: Sequence[int] = DEFAULT_SEQ,
    mixers: Sequence[str] = DEFAULT_MIXERS,
    size: str = "mini",
    batch: int = 1,
    vocab: int = DEFAULT_VOCAB,
    device: str = "cpu",
    threads: Optional[int] = None,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float = 30.0,
    isolate: bool = True,
    mem_limit_gb: Optional[float] = None,
    log=print,
) -> List[Dict]:
    """Every (mixer, N) case; records in mixer-major order. Failed or skipped cases carry ``error`` /
    ``skipped``."""
    from sofa.bench.isolation import run_isolated

    if mem_limit_gb is None:
        free = memory.available_memory()
        mem_limit_gb = 0.8 * free / 1e9 if free else 8.0
    records = []
    for mixer in mixers:
        for n in seqs:
            spec = dict(
                size=size,
                mixer=mixer,
                seq=n,
                batch=batch,
                vocab=vocab,
                device=device,
                threads=threads,
                repeats=repeats,
                warmup=warmup,
                budget_s=budget_s,
            )
            if mixer == "softmax" and softmax_bytes(size, n, batch) > mem_limit_gb * 1e9:
                est = softmax_bytes(size, n, batch) / 1e9
                rec = dict(spec, skipped=f"softmax attention needs ~{est:.1f} GB here, over --mem-limit")
            else:
                try:
                    rec = run_isolated("text", spec) if isolate else run_case(spec)
                except Exception as err:  # a case that fails is reported, the others still run
                    rec = dict(spec, error=str(err))
            records.append(rec)
            log(_line(rec))
    return records


def _line(r: Dict) -> str:
    head = f"text_{r.get('size', 'mini')}_{r['mixer']:<10} N={r['seq']:>6} B={r['batch']}"
    if r.get("skipped"):
        return f"{head}  skipped: {r['skipped']}"
    if r.get("error"):
        return f"{head}  failed: {r['error']}"
    return (
        f"{head}  step {measure.fmt_time(r['median_s'])} ({r['runs']} runs)  "
        f"peak +{measure.fmt_bytes(r.get('peak_mem_bytes'))}"
    )


def markdown(records: Sequence[Dict]) -> str:
    """A table: one row per mixer, step time / peak memory per N."""
    seqs = sorted({int(r["seq"]) for r in records})
    mixers = list(dict.fromkeys(r["mixer"] for r in records))
    lines = ["| mixer | " + " | ".join(f"N={n}" for n in seqs) + " |", "|---" * (len(seqs) + 1) + "|"]
    for m in mixers:
        cells = []
        for n in seqs:
            r = next((x for x in records if x["mixer"] == m and int(x["seq"]) == n), None)
            if r is None or r.get("skipped") or r.get("error"):
                cells.append("skipped" if r is not None and r.get("skipped") else "-")
            else:
                cells.append(f"{measure.fmt_time(r['median_s'])} / {measure.fmt_bytes(r.get('peak_mem_bytes'))}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_text(args) -> int:
    """``sofa bench text``."""
    from pathlib import Path

    records = bench_text(
        seqs=args.seq or DEFAULT_SEQ,
        mixers=args.mixers or DEFAULT_MIXERS,
        size=args.size,
        batch=args.batch,
        vocab=args.vocab,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        budget_s=args.budget,
        isolate=args.isolate,
        mem_limit_gb=args.mem_limit,
    )
    table = markdown(records)
    print(table, end="")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        mem_method = memory.MEM_METHOD_CUDA if args.device == "cuda" else memory.MEM_METHOD_CPU
        out = {"machine": measure.machine_info(args.device), "memory": mem_method, "records": records}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if not any(r.get("error") for r in records) else 1
