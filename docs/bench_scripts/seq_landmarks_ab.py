# usage: PYTHONPATH=src python docs/bench_scripts/seq_landmarks_ab.py THREADS
# SOFT's sequence landmarks (segment means) by a one-hot matrix product (before) against index_add (now), in
# the 1-D mixer of `sofa bench mixers --seq` (width 64, 2 heads, 128 landmarks), inference and training step,
# the two timed in turn (ABBA) in one process.
import statistics, sys
import torch
import torch.nn.functional as F
from sofa.bench.measure import paired_ratios, time_interleaved
from sofa.bench.mixers import build
from sofa.mixers.soft import SoftAttention

torch.set_num_threads(int(sys.argv[1]))
index_add = SoftAttention.sequence_landmarks


def one_hot(self, q, mask):
    B, h, N, d = q.shape
    valid = q.new_ones(B, N) if mask is None else mask.to(q.dtype)
    n_valid = valid.sum(-1, keepdim=True).clamp_min(1.0)
    m_each = torch.ceil(n_valid / self.landmark_stride)
    if self.max_landmarks is not None:
        m_each = m_each.clamp_max(self.max_landmarks)
    m = int(m_each.max().item())
    rank = valid.cumsum(-1) - valid
    segment = torch.floor(rank * m_each / n_valid).clamp_max(m - 1).long()
    S = F.one_hot(segment, m).to(q.dtype) * valid.unsqueeze(-1)
    counts = S.sum(1)
    return torch.einsum("bnm,bhnd->bhmd", S, q) / counts.clamp_min(1.0)[:, None, :, None], counts > 0


def with_impl(impl, step):
    def run():
        SoftAttention.sequence_landmarks = impl
        try:
            step()
        finally:
            SoftAttention.sequence_landmarks = index_add
    return run


for n in (16384, 65536):
    mixer = build("soft", True)
    x = torch.randn(1, n, 64)
    xg = x.clone().requires_grad_(True)

    def infer():
        with torch.inference_mode():
            mixer.eval()(x)

    def train():
        mixer.train()(xg).sum().backward()

    for mode, step in (("inference", infer), ("train", train)):
        t = time_interleaved({"one_hot": with_impl(one_hot, step), "index_add": with_impl(index_add, step)},
                             repeats=20, warmup=2)
        r = statistics.median(paired_ratios(t["index_add"]["times_s"], t["one_hot"]["times_s"]))
        print(f"N={n} {mode}: one-hot {t['one_hot']['median_s'] * 1e3:.1f} ms, index_add "
              f"{t['index_add']['median_s'] * 1e3:.1f} ms, speed-up (ABBA median) {r:.2f}x")
