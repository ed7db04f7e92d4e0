"""High-resolution check: one 800×1333 image through Mask R-CNN on the CPU, peak memory per backbone.

    python -m sofa.dense.highres                      # the default cases below
    python -m sofa.dense.highres --cases soft_norm_tiny:max_landmarks=49 setformer_mini --json out.json

Each case runs in a fresh process: build Mask R-CNN (random weights, COCO's 80 classes, ``min_size=800``,
``max_size=1333``, so the image is not resized and is padded to 800×1344), then one inference forward under
``torch.no_grad``. Memory is measured as in ``sofa bench`` (``sofa.bench.memory.peak_memory``: the extra resident
memory at the peak of the call, over what was resident before it — weights and input excluded), plus the
process's whole peak resident set; then the same for the backbone + FPN alone on the padded 800×1344 batch
(the whole detector's peak includes its 100 pasted full-size masks, ≈0.43 GB, whatever the backbone). A case is
``MODEL[:KEY=VALUE,...]`` with backbone keyword arguments.

The default cases compare SOFT with bounded landmarks (``max_landmarks=49``, linear cost), the released
stride-landmark SOFT (r = 8, 4, 2: about 1,050 landmarks per stage at this size, quadratic cost), SeTformer
(m = 49 reference tokens) and PoolFormer (no attention) as the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_CASES = ("soft_norm_tiny:max_landmarks=49", "soft_norm_tiny", "setformer_mini", "poolformer_s12")


def parse_case(case: str) -> tuple[str, dict]:
    import yaml

    name, _, rest = case.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        kwargs[k.strip()] = yaml.safe_load(v)
    return name, kwargs


def run_case(case: str, height: int = 800, width: int = 1333, detector: str = "maskrcnn") -> dict:
    """Run one case in this process (call it in a fresh one); returns the measurements."""
    import torch

    from sofa.bench.memory import peak_memory, process_status_kib
    from sofa.dense.detection import build_detector

    name, kwargs = parse_case(case)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_detector(
        detector, name, num_classes=80, min_size=min(height, width), max_size=max(height, width), **kwargs
    ).eval()
    build_s = time.perf_counter() - t0
    image = torch.rand(3, height, width)
    timing = {}

    def forward():
        with torch.no_grad():
            t = time.perf_counter()
            out = model([image])
            timing["forward_s"] = time.perf_counter() - t
        return out

    mem = peak_memory(forward)
    # the backbone + FPN alone on the padded batch the detector builds (800×1344 for 800×1333): the full
    # detector's peak also holds its 100 pasted full-size masks (≈0.43 GB at 800×1333), the same for every backbone
    padded = torch.rand(1, 3, -(-height // 32) * 32, -(-width // 32) * 32)

    def features():
        with torch.no_grad():
            t = time.perf_counter()
            out = model.backbone(padded)
            timing["backbone_s"] = time.perf_counter() - t
        return out

    mem_b = peak_memory(features)
    params = sum(p.numel() for p in model.backbone.body.parameters())
    return {
        "case": case,
        "backbone": name,
        "backbone_kwargs": kwargs,
        "detector": detector,
        "image": [height, width],
        "backbone_params_M": params / 1e6,
        "build_s": build_s,
        "forward_s": timing.get("forward_s"),
        "peak_extra_bytes": mem.get("peak_mem_bytes"),
        "backbone_fpn_s": timing.get("backbone_s"),
        "backbone_fpn_peak_extra_bytes": mem_b.get("peak_mem_bytes"),
        "process_peak_rss_bytes": (process_status_kib("VmHWM") or 0) * 1024,
        "mem_method": mem.get("mem_method"),
        "threads": torch.get_num_threads(),
    }


def _gib(n: int | None) -> float:
    """Bytes in GiB (NaN where unmeasured)."""
    return n / 1024**3 if n is not None else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sofa.dense.highres", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="MODEL[:KEY=VALUE,...] per case")
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--detector", default="maskrcnn", choices=("maskrcnn", "retinanet"))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(args.worker, args.height, args.width, args.detector)))
        return 0
    results = []
    print(f"{args.detector} on one {args.height}x{args.width} image, CPU, fresh process per case")
    print(f"{'':<36} {'backbone':>8} {'Mask R-CNN (whole)':>22} {'backbone + FPN':>22} {'process':>9}")
    print(f"{'case':<36} {'params':>8} {'time':>9} {'peak extra':>12} {'time':>9} {'peak extra':>12} {'peak RSS':>9}")
    for case in args.cases:
        cmd = [
            sys.executable,
            "-m",
            "sofa.dense.highres",
            "--worker",
            case,
            "--height",
            str(args.height),
            "--width",
            str(args.width),
            "--detector",
            args.detector,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"{case:<36} failed (exit {proc.returncode}): {' | '.join(tail)}")
            results.append({"case": case, "error": proc.returncode, "stderr_tail": tail})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{case:<36} {r['backbone_params_M']:7.2f}M {r['forward_s']:8.1f}s {_gib(r['peak_extra_bytes']):9.2f}GiB "
            f"{r['backbone_fpn_s']:8.1f}s {_gib(r['backbone_fpn_peak_extra_bytes']):9.2f}GiB "
            f"{_gib(r['process_peak_rss_bytes']):6.2f}GiB",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
