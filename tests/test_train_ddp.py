"""Data-parallel training: ``torchrun --nproc_per_node=2 -m sofa train`` on the CPU (gloo).

Checks that it finishes, that only rank 0 wrote (one log, no per-rank files, the header printed once), that the
two ranks end with identical weights, that evaluation covered each validation image exactly once, and that the
result equals a single process with twice the batch (each step's two shards together are that batch).

Both runs train with SGD: its step is a fixed linear combination of the gradients, so the float32 rounding that
separates the two runs stays of the size of the gradients' own rounding, and the comparison's tolerance follows
from float32's eps (see ``rounding_tolerance``). An adaptive optimiser would not do: AdamW divides each gradient
by its own running magnitude, so a gradient that is zero in exact arithmetic (the key bias's, which softmax
ignores) becomes rounding noise scaled up to learning-rate-sized steps, different on every CPU.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch import nn

from sofa.cli import main
from sofa.data.synthetic import make_image_folder
from sofa.train.factory import create_classifier

from helpers import LOG_EVERY_STEP, torchrun_two_cpu_processes

# no dropout/drop-path/mixup (their randomness is per rank by design); augmentation stays on: it is seeded per
# sample, the same whichever rank loads it
MODEL, IMG_SIZE, NUM_CLASSES, EPOCHS, SEED = "test_vit", 16, 3, 2, 3
COMMON = [
    "--model",
    MODEL,
    "--img-size",
    str(IMG_SIZE),
    "--epochs",
    str(EPOCHS),
    "--seed",
    str(SEED),
    "--workers",
    "0",
    "--opt",
    "sgd",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--drop-path",
    "0",
    "--reprob",
    "0.25",
    *LOG_EVERY_STEP,
]
TRAIN_PER_CLASS, BATCH = 8, 8  # one process with batch 8; two with 4 each


def rounding_tolerance(model: nn.Module, rows_per_step: int, steps: int, update: float) -> tuple[float, float]:
    """(rtol, atol) that bound how far float32 rounding alone can set apart two runs of the same SGD steps which
    compute each step's gradient in a different order (one batch, or two shards averaged by the all-reduce).

    - rtol = steps × eps: each run rounds every weight to float32 after each step (half an ulp, and an ulp of w is
      at most eps·|w|), so the two may part by one ulp per step even where their updates agree.
    - atol = n·u·update, u = eps/2: a float32 dot product of length K is exact to K·u relative to the sum of its
      terms' magnitudes (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1), and to first order the
      relative errors of a chain of them add. A step's gradient passes through every Linear/Conv layer forward
      (a sum over its fan-in) and backward (over its fan-out), then sums over the batch's rows, so n is the total
      of those lengths. SGD's update is the same linear combination of the gradients in both runs (learning
      rates, momentum), so its rounding is n·u times the scale of the update, the largest change of any weight
      over the run. Taking that scale for every tensor also covers gradients that cancel to zero in exact
      arithmetic (the key bias), whose summed terms are of the same size as their neighbours'.
    """
    eps = torch.finfo(torch.float32).eps
    n = rows_per_step
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            n += m.weight[0].numel() + m.weight.shape[0]  # fan-in (forward) + fan-out (backward)
    return steps * eps, n * eps / 2 * update


def test_torchrun_two_processes_on_cpu(tmp_path):
    data = make_image_folder(
        tmp_path / "data", num_classes=NUM_CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=3
    )
    out, dump = tmp_path / "ddp", tmp_path / "ranks"
    script_args = ["--save-rank-weights", dump, "--", "train", "--data", data, *COMMON, "-b", BATCH // 2]
    p = torchrun_two_cpu_processes([*script_args, "--output", out], cwd=tmp_path)
    assert p.stdout.count("sofa train: task classification") == 1  # only rank 0 speaks
    assert "2 process(es)" in p.stdout and "3 steps of 4×2" in p.stdout
    # only rank 0 wrote: the run folder holds one set of files, nothing per rank, and no stray runs/ elsewhere
    names = sorted(f.name for f in out.iterdir())
    assert names == sorted(
        ["best.safetensors", "config.yaml", "curves.png", "last.pt", "log.txt", "metrics.jsonl", "model.safetensors"]
    ), names
    assert not (tmp_path / "runs").exists()
    assert (out / "log.txt").read_text().count("sofa train:") == 1
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]
    assert recs[-1]["val_count"] == 9  # the validation shards together hold each image once
    # the ranks agree
    r0, r1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
    # DDP with 2×4 = one process with batch 8 (same samples per step, mean of the two shard gradients): equal in
    # exact arithmetic, so they may differ only by float32 rounding. A broken DDP (gradients summed rather than
    # averaged, not all-reduced, shards that overlap) moves weights by the size of the update itself.
    single = tmp_path / "single"
    assert main(["train", "--data", str(data), *COMMON, "-b", str(BATCH), "--output", str(single)]) == 0
    ws, wd = load_file(single / "model.safetensors"), load_file(out / "model.safetensors")
    torch.manual_seed(SEED)  # the loop's initialisation, to measure how far training moved the weights
    model = create_classifier(MODEL, num_classes=NUM_CLASSES, img_size=IMG_SIZE)
    w0 = model.state_dict()
    update = max((ws[k] - w0[k]).abs().max().item() for k in ws)
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    steps = EPOCHS * (NUM_CLASSES * TRAIN_PER_CLASS // BATCH)
    rtol, atol = rounding_tolerance(model, BATCH * tokens, steps, update)
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], rtol=rtol, atol=atol, msg=k)
