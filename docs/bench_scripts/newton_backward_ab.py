# usage: PYTHONPATH=src python docs/bench_scripts/newton_backward_ab.py THREADS
# SOFT-Norm's training step with newton_pinv's backward through the last iterations ("auto") against through
# all of them ("full"), timed in turn: the LRA mixer at 256 and 1,024 tokens, soft_norm_tiny at batch 4, 224².
import statistics, sys
import torch
import sofa
import sofa.ops.soft.attention as attention
from sofa.bench.measure import paired_ratios, time_interleaved
from sofa.bench.mixers import build
from sofa.ops.newton import newton_pinv

torch.set_num_threads(int(sys.argv[1]))


def with_backward(backward, step):
    def run():
        attention.newton_pinv = lambda *a, **k: newton_pinv(*a, **{**k, "backward": backward})
        try:
            step()
        finally:
            attention.newton_pinv = newton_pinv
    return run


def training_step(model, x):
    def step():
        for p in model.parameters():
            p.grad = None
        model(x).float().sum().backward()
    return step


cases = [(f"LRA soft_norm mixer, {n} tokens", build("soft_norm", True).train(), torch.randn(1, n, 64), 20)
         for n in (256, 1024)]
cases.append(("soft_norm_tiny, batch 4, 224²", sofa.create_model("soft_norm_tiny").train(),
              torch.randn(4, 3, 224, 224), 4))
for name, model, x, rounds in cases:
    step = training_step(model, x.requires_grad_(x.dim() == 3))
    t = time_interleaved({b: with_backward(b, step) for b in ("auto", "full")}, repeats=rounds, warmup=1)
    r = statistics.median(paired_ratios(t["auto"]["times_s"], t["full"]["times_s"]))
    print(f"{name}: full {t['full']['median_s'] * 1e3:.1f} ms, auto {t['auto']['median_s'] * 1e3:.1f} ms, "
          f"speed-up (ABBA median) {r:.2f}x")
