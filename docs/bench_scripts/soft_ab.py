# usage: PYTHONPATH=src python docs/bench_scripts/soft_ab.py MODEL SIDE CHANGE ROUNDS THREADS
# CHANGE: newton, gelu, linear (that change toggled, the earlier ones on in both arms) or all (everything off vs on)
"""A/B timing in turn (ABBA) of soft_tiny inference: one change toggled by monkeypatching, same process."""
import sys, time, statistics, json
import torch, torch.nn.functional as F
import sofa.runtime; sofa.runtime.keep_freed_memory()
import sofa.models, sofa.ops.newton as newton, sofa.models.metaformer as mf
from sofa.ops.linear import linear
from sofa.bench.measure import matmul_peak, time_interleaved, paired_ratios
from sofa.bench.models import count_flops
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 2)
name = sys.argv[1]; side = int(sys.argv[2]); change = sys.argv[3]; rounds = int(sys.argv[4])
fast_iter, fast_gelu = newton._iterate_batched, mf.linear_gelu
plain_iter = lambda V, P, n: newton._iterate(V, P, n)
plain_gelu = lambda x, w, b, a: F.gelu(linear(x, w, b), approximate=a)
import sofa.layers as layers
from sofa.ops.linear import choose_impl, rows_as_map
fast_linear = layers.linear
def old_linear(x, weight, bias=None):
    if choose_impl(x, weight) == "blas":
        return F.linear(x, weight, bias)
    K = x.shape[-1]; M = x.numel() // K
    y = F.conv2d(rows_as_map(x.reshape(M, K)), weight.view(weight.shape[0], K, 1, 1), bias)
    return y[0, :, :, 0].t().reshape(*x.shape[:-1], weight.shape[0])
def setup(v):  # v: dict of what is on
    layers.linear = fast_linear if v.get("linear") else old_linear
    newton._iterate_batched = fast_iter if v.get("newton") else plain_iter
    mf.linear_gelu = fast_gelu if v.get("gelu") else plain_gelu
changes = ["newton", "gelu", "linear"]
if change == "all":
    A, B = {}, {c: True for c in changes}
else:
    k = changes.index(change)
    A = {c: True for c in changes[:k]}; B = dict(A, **{change: True})
torch.manual_seed(0)
kw = {}
if "[" in name:
    from sofa.bench.models import model_kwargs; name, kw = model_kwargs(name)
m = sofa.models.create_model(name, **kw).eval()
x = torch.randn(8, 3, side, side)
with torch.inference_mode():
    setup(A); ya = m(x); setup(B); yb = m(x)
print("max rel diff of outputs A vs B:", float((ya - yb).abs().max() / ya.abs().max()))
flops = count_flops(m, x[:1]) * 8
def run(v):
    def f():
        setup(v)
        with torch.inference_mode(): m(x)
    return f
g = matmul_peak("cpu", size=2048, repeats=5)["flops_per_s"]
t = time_interleaved({"a": run(A), "b": run(B)}, repeats=rounds, warmup=2)
g2 = matmul_peak("cpu", size=2048, repeats=5)["flops_per_s"]
ta, tb = t["a"]["median_s"], t["b"]["median_s"]
r = paired_ratios(t["a"]["times_s"], t["b"]["times_s"])
gm = (g + g2) / 2
print(json.dumps(dict(model=name, kw=kw, side=side, change=change, before_img_s=8/ta, after_img_s=8/tb,
    speedup_median_abba=statistics.median([1/x for x in r]), gemm_gflops=[g/1e9, g2/1e9], gflop_per_img=flops/8/1e9,
    before_frac=flops/ta/gm, after_frac=flops/tb/gm, rounds=rounds)))
