"""The device a command asked for (train.device, --device), checked once: apart from the training
runtime, so that the stages that only run a network (features, evaluate) depend on no distributed code."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import DataError


def select_device(name: str) -> torch.device:
    """auto: CUDA when present, else the CPU. Asking for a GPU that is not there is an error, not a
    traceback from deep inside PyTorch at the first tensor moved."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DataError(f"device {name!r}: CUDA is not available on this machine (torch {torch.__version__} "
                            f"sees no GPU); use auto or cpu")
        if device.index is not None and device.index >= count:
            raise DataError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


@contextmanager
def autotuned(device):
    """On a GPU, for a training's steps (the same shapes step after step): TF32 tensor cores for fp32 matrix
    products and convolutions (Ampere and later), and cuDNN's autotuner, which times each convolution's
    kernels once per input shape and keeps the fastest (torchvision's references turn it on the same way);
    put back as they were afterwards, so that inference on shapes that vary (frames of any size) does not
    time kernels for every new one. Nothing on the CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    cudnn.benchmark = cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A tensor made on the CPU during a step (indices, labels, random draws: a few numbers), onto
    `device` without waiting: a plain copy from pageable memory to a GPU synchronises the stream (the
    host waits for every queued kernel), so on CUDA it goes through pinned memory, non-blocking
    (PyTorch keeps the pinned buffer until the copy is done). Elsewhere `.to`: the CPU's tensor itself."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def peak_memory(device) -> dict:
    """The most GPU memory this process's tensors took (PyTorch's allocator, MiB), for a stage's report on
    a GPU (docs/scaling.md); nothing on the CPU, whose reports stay what they were."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    return {"gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)}
