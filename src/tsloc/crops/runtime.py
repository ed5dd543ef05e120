"""Where and how training runs, decided once: the device, the precision and this process's rank
among torchrun's ranks (`runtime`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..device import select_device
from ..errors import DataError
from ..numerics import bf16_kernels_capped
from .distributed import World, join

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """train.precision: auto is fp32 everywhere: on the CPU mixed precision does not pay (and the
    CPU results stay what they were); on a GPU this network is too small for it to pay either. On an
    H200 (`benchmarks/speed.py --device cuda --size 144`, reported in the GPU issue at `5494dc9`) bf16
    trained slower than fp32 at batch 32 (1,390 against 1,411 images/s) and 256 (9,094 against
    10,700), and inferred slower at every batch but 1024: the step is bound by launches, not by
    arithmetic. fp32 on CUDA runs its matrix products and convolutions in TF32 (`fit`:
    tsloc.device.autotuned). bf16 and fp16 stay available for larger networks or batches; on a
    CPU with bf16 instructions (AVX-512 BF16, AMX) bf16 trains about 1.3x faster than fp32, with the
    machine's own kernels only (below)."""
    if name == "auto":
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise DataError(f"train.precision fp16 needs a CUDA device (this run is on {device}); use fp32 or bf16")
    cap = bf16_kernels_capped() if name == "bf16" and device.type == "cpu" else None
    if cap:
        raise DataError(f"train.precision bf16 on the CPU needs the machine's own kernels, and this process's "
                        f"are capped at ONEDNN_MAX_CPU_ISA={cap} (the stages set AVX2 "
                        "so that figures repeat across machines: tsloc.numerics); there PyTorch has no bf16 "
                        "convolutions (a step about 20x slower than fp32's). Run with TSLOC_CPU_KERNELS=native "
                        "(TSLOC_CPU_KERNELS=native dvc exp run -S train.precision=bf16 ...; a cap of your own: "
                        "unset ONEDNN_MAX_CPU_ISA), or use fp32")
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
