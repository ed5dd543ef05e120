"""Where and how training runs, decided once: the device, the precision and this process's rank
among torchrun's ranks (`runtime`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..device import select_device
from ..errors import DataError
from .distributed import World, join

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """train.precision: auto is bf16 on a CUDA device that has it, else fp16, and fp32 on the CPU
    (where mixed precision does not pay, and the CPU results stay what they were)."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise DataError(f"train.precision fp16 needs a CUDA device (this run is on {device}); use fp32 or bf16")
    return name


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop runs, decided once (`runtime`): the device, the precision (resolved:
    fp32, bf16 or fp16) and this process's rank among the ranks (`World()`: one process)."""
    device: torch.device
    precision: str = "fp32"
    world: World = World()

    def autocast(self):
        """Mixed precision for the forward pass and the loss (a no-op at fp32)."""
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=self.precision != "fp32")


def runtime(device: str, precision: str, processes: int = 1) -> Runtime:
    """Device, precision and distribution, chosen in one place: under torchrun each rank joins the
    process group (gloo on the CPU, NCCL on CUDA) and takes the GPU of its local rank."""
    chosen = select_device(device)
    world = join(chosen, processes)
    if chosen.type == "cuda" and world.distributed:
        chosen = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(chosen)
    return Runtime(chosen, resolve_precision(precision, chosen), world)
