# usage: PYTHONPATH=src OMP_NUM_THREADS=2 python docs/bench_scripts/soft_profile.py [MODEL]  (torch.profiler, per operator and per stage)
import torch, time, sys
from torch.profiler import profile, ProfilerActivity, record_function
import sofa.models, sofa.runtime
sofa.runtime.keep_freed_memory()
torch.set_num_threads(2)
torch.manual_seed(0)
name = sys.argv[1] if len(sys.argv) > 1 else "soft_tiny"
m = sofa.models.create_model(name).eval()
x = torch.randn(8,3,224,224)
# stage hooks
def rf(mod, label):
    def pre(mod, a): mod._rf = record_function(label); mod._rf.__enter__()
    def post(mod, a, o): mod._rf.__exit__(None,None,None)
    mod.register_forward_pre_hook(pre); mod.register_forward_hook(post)
for n, mod in m.named_modules():
    if n.count('.') == 0 and n: rf(mod, "mod:"+n)
    if n.endswith('.attn') or n.endswith('.mlp'): rf(mod, "mod:"+n)
with torch.inference_mode():
    for _ in range(3): m(x)
    ts=[]
    for _ in range(5):
        t0=time.perf_counter(); m(x); ts.append(time.perf_counter()-t0)
    print("median s", sorted(ts)[2], "img/s", 8/sorted(ts)[2])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        m(x)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=40))
ev = [e for e in prof.key_averages() if e.key.startswith("mod:")]
for e in sorted(ev, key=lambda e: e.key): print(f"{e.key:40s} {e.cpu_time_total/1e3:8.1f} ms x{e.count}")
