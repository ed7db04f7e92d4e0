# usage: PYTHONPATH=src python docs/bench_scripts/newton_ab.py THREADS  (plain vs batched Newton iteration, in turn)
import torch, statistics, sys
import sofa.runtime; sofa.runtime.keep_freed_memory()
from sofa.ops.newton import _iterate, _iterate_batched
from sofa.ops.kernels import gaussian_kernel
from sofa.bench.measure import time_interleaved, paired_ratios
torch.set_num_threads(int(sys.argv[1]))
for b in (16, 32, 80):
    L = torch.randn(b, 49, 32) * 0.4
    A = gaussian_kernel(L, L).reshape(b // 2 if b > 16 else b, -1, 49, 49) if False else gaussian_kernel(L, L)
    P = A + 0.01 * torch.eye(49); V0 = (0.9 * 2 / A.sum(-1).amax(-1) ** 2)[:, None, None] * P
    with torch.inference_mode():
        t = time_interleaved({"plain": lambda: _iterate(V0, P, 20), "batched": lambda: _iterate_batched(V0, P, 20)}, repeats=200, warmup=5)
        r = paired_ratios(t["batched"]["times_s"], t["plain"]["times_s"])
        fl = 20 * 2 * 2 * b * 49**3
        print(f"({b},49,49) x20 iters: plain {t['plain']['median_s']*1e3:.2f} ms ({fl/t['plain']['median_s']/1e9:.0f} GFLOP/s), batched {t['batched']['median_s']*1e3:.2f} ms ({fl/t['batched']['median_s']/1e9:.0f} GFLOP/s), speed-up (ABBA median) {statistics.median(r):.2f}x")
