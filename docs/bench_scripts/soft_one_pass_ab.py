# usage: PYTHONPATH=src python docs/bench_scripts/soft_one_pass_ab.py THREADS
# The training step of the 1-D SOFT mixer (sofa bench mixers --seq: width 64, 2 heads, 128 landmarks) and of
# soft_tiny (batch 8, 224²) with SOFT's one-pass attention as one function with its backward written out (now)
# against autograd through its three products (before), timed in turn (ABBA) in one process.
import statistics, sys
import torch
import sofa
from sofa.bench.measure import paired_ratios, time_interleaved
from sofa.bench.mixers import build
from sofa.ops.soft.attention import _OnePassAttention

torch.set_num_threads(int(sys.argv[1]))
takes = _OnePassAttention.takes


def with_function(use, step):
    def run():
        _OnePassAttention.takes = takes if use else staticmethod(lambda *args: False)
        try:
            step()
        finally:
            _OnePassAttention.takes = takes
    return run


def train_step(model, x):
    def step():
        for p in model.parameters():
            p.grad = None
        model(x).float().sum().backward()
    return step


cases = [(f"1-D SOFT mixer, {n:,} tokens", build("soft", True).train(), torch.randn(1, n, 64).requires_grad_(), 10)
         for n in (4096, 16384, 65536)]
cases.append(("soft_tiny, batch 8, 224²", sofa.create_model("soft_tiny").train(), torch.randn(8, 3, 224, 224), 4))
for name, model, x, rounds in cases:
    step = train_step(model, x)
    t = time_interleaved({"autograd": with_function(False, step), "written": with_function(True, step)},
                         repeats=rounds, warmup=1)
    r = statistics.median(paired_ratios(t["written"]["times_s"], t["autograd"]["times_s"]))
    print(f"{name}: autograd through the products {t['autograd']['median_s'] * 1e3:.1f} ms, written-out backward "
          f"{t['written']['median_s'] * 1e3:.1f} ms, speed-up (ABBA median) {r:.2f}x")
