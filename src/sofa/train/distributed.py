"""The processes and devices of a run: the DDP group (one process per device under ``torchrun``, NCCL on GPUs,
gloo on the CPU), agreement between the ranks, and the mixed precision the run computes in."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from sofa.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device_opt: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device_opt = device_opt or "auto"
    if device_opt == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_opt)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {device_opt}: no CUDA device is available (use --device cpu)")
            if device.index is None:
                device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    d = Dist(rank, world, local, device)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        d.initialised_here = True
    return d


def teardown_distributed(d: Dist) -> None:
    if d.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def agree_max(d: Dist, value: int) -> int:
    """The largest of the ranks' ``value`` (the value itself without DDP)."""
    if not d.distributed:
        return int(value)
    t = torch.tensor([float(value)], device=d.device)  # NCCL reduces device tensors only
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    amp = amp or "auto"
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if amp == "fp16":
        if device.type == "cpu":
            raise UserError("--amp fp16 is for GPUs; on the CPU use --amp bf16 (or none)")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    raise UserError(f"--amp must be auto, none, bf16 or fp16, got {amp!r}")


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
