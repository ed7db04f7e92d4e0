# usage: PYTHONPATH=src python docs/bench_scripts/set_seq_ab.py THREADS
# The 1-D SeT mixer of sofa bench mixers --seq (width 64, 2 heads, 128 references, 32 anchors), inference and
# training step, now against the three forms it replaced, timed in turn (ABBA) in one process: the sequence
# filter whole (B, 1, n, m) instead of by blocks (SequenceFilter), the spherical kernel in five passes
# (spherical_gaussian_kernel_plain) instead of fused, and the Sinkhorn row sums as K·x instead of (xᵀ·Kᵀ)ᵀ.
import statistics, sys
import torch
from sofa.bench.measure import paired_ratios, time_interleaved
from sofa.bench.mixers import build
from sofa.mixers import set as set_mixer
from sofa.ops import nystrom
from sofa.ops.position import position_filter_sequence
from sofa.ops.set import attention

torch.set_num_threads(int(sys.argv[1]))
now = (set_mixer.SequenceFilter, attention.spherical_gaussian_kernel, attention._times_column)


def dense_filter(mask, m, tau, n=None, device=None):
    valid = torch.ones(1, n, device=device) if mask is None else mask
    return position_filter_sequence(valid, m, tau, log=True)[:, None]


def plain_kernel(a, z, sigma):
    return nystrom.spherical_gaussian_kernel_plain(a.float(), z.float(), sigma)


before = (dense_filter, plain_kernel, lambda K, x: K @ x)


def with_forms(forms, step):
    def run():
        set_mixer.SequenceFilter, attention.spherical_gaussian_kernel, attention._times_column = forms
        try:
            step()
        finally:
            set_mixer.SequenceFilter, attention.spherical_gaussian_kernel, attention._times_column = now
    return run


def inference(mixer, x):
    def step():
        with torch.no_grad():
            mixer(x)
    return step


def train(mixer, x):
    def step():
        mixer.zero_grad(set_to_none=True)
        mixer(x).sum().backward()
    return step


for n in (16384, 65536):
    mixer = build("set", True)
    for mode, step in (("inference", inference(mixer.eval(), torch.randn(1, n, 64))),
                       ("training step", train(mixer.train(), torch.randn(1, n, 64).requires_grad_()))):
        t = time_interleaved({"before": with_forms(before, step), "now": with_forms(now, step)}, repeats=8, warmup=1)
        r = statistics.median(paired_ratios(t["now"]["times_s"], t["before"]["times_s"]))
        print(f"1-D SeT mixer, {n:,} tokens, {mode}: before {t['before']['median_s'] * 1e3:.1f} ms, now "
              f"{t['now']['median_s'] * 1e3:.1f} ms, speed-up (ABBA median) {r:.2f}x")
