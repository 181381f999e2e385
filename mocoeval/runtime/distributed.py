"""Processes and devices, as torchrun (or Slurm's srun) sets them: one function for every training loop.

A single process never creates a process group: synchronised BN then behaves as plain BN (on CPU it would
raise once a group exists). With WORLD_SIZE > 1, NCCL on GPUs and gloo on CPU (the path CI tests).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from mocoeval.runtime.errors import UserError


@dataclasses.dataclass(frozen=True)
class Processes:
    device: torch.device
    rank: int
    world_size: int
    local_world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """How many processes torchrun (or srun) started for this run: 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_processes(device_arg: str | None = "auto") -> Processes:
    """The device for `--device` (auto, cpu, cuda, cuda:N; None = auto) and, under torchrun, the process
    group. Bad or unavailable devices are one-line errors."""
    device_arg = device_arg or "auto"
    if device_arg not in ("auto", "cpu") and not device_arg.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device_arg!r}")
    want_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError(f"--device {device_arg}: CUDA is not available on this machine (use --device cpu)")
    if launched_world_size() > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo", device_id=device if want_cuda else None)
        return Processes(device, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    device = torch.device("cuda" if device_arg == "auto" else device_arg) if want_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Processes(device, 0, 1, 1)


def barrier(world_size: int) -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if world_size > 1 and dist.is_initialized():
        dist.barrier()


def teardown(world_size: int) -> None:
    if world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
