"""Data-parallel training: ``torchrun --nproc_per_node=2 -m sofa train`` on the CPU (gloo).

Checks that it finishes, that only rank 0 wrote (one log, no per-rank files, the header printed once), that the
two ranks end with identical weights, that evaluation covered each validation image exactly once, and that the
result equals a single process with twice the batch (each step's two shards together are that batch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sofa.cli import main
from sofa.data.synthetic import make_image_folder

# no dropout/drop-path/mixup (their randomness is per rank by design); augmentation stays on: it is seeded per
# sample, the same whichever rank loads it
COMMON = ["--model", "test_vit", "--img-size", "16", "--epochs", "2", "--seed", "3", "--workers", "0",
          "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--reprob", "0.25", "--threads", "1",
          "--progress", "log", "--log-interval", "1"]


def test_torchrun_two_processes_on_cpu(tmp_path):
    data = make_image_folder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=3)
    out, dump = tmp_path / "ddp", tmp_path / "ranks"
    env = dict(os.environ, OMP_NUM_THREADS="1", SOFA_DEBUG_RANK_WEIGHTS=str(dump))
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sofa", "train",
         "--data", str(data), *COMMON, "-b", "4", "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert p.stdout.count("sofa train: task classification") == 1  # only rank 0 speaks
    assert "2 process(es)" in p.stdout and "3 steps of 4×2" in p.stdout
    # only rank 0 wrote: the run folder holds one set of files, nothing per rank, and no stray runs/ elsewhere
    names = sorted(f.name for f in out.iterdir())
    assert names == sorted(["best.safetensors", "config.yaml", "curves.png", "last.pt", "log.txt", "metrics.jsonl",
                            "model.safetensors"]), names
    assert not (tmp_path / "runs").exists()
    assert (out / "log.txt").read_text().count("sofa train:") == 1
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
    assert recs[-1]["val_count"] == 9  # the validation shards together hold each image once
    # the ranks agree
    r0, r1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
    # DDP with 2×4 = one process with batch 8 (same samples per step, mean of the two shard gradients)
    single = tmp_path / "single"
    assert main(["train", "--data", str(data), *COMMON, "-b", "8", "--output", str(single)]) == 0
    ws, wd = load_file(single / "model.safetensors"), load_file(out / "model.safetensors")
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-4, atol=1e-5, msg=k)
