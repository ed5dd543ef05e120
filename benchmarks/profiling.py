"""What bounds a training step: one pass of `run` under torch.profiler, summed per step (speed.py and
detector_training.py, `--profile`). On a GPU the step is bound by the device when its kernels fill the
wall time; far under that, by Python, launches or the host waiting for the device (a sync stalls the
queue): the printed line says which, the table by which operators."""
from __future__ import annotations

import time

import torch

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")  # the host waits


def profile_pass(run, device: torch.device, steps: int, title: str, rows: int = 15) -> dict:
    """Run `run()` (`steps` training steps, after the caller's warm-up) under the profiler and print: ms a
    step and, on a GPU, the device's kernel time as a share of it, kernel launches a step and the calls
    where the host waited; then the `rows` operators with the most time (device time on a GPU, else CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()  # the warm-up's kernels done before the clock starts
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        started = time.perf_counter()
        run()
        sync()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    # the device's time: `self_device_time_total` since torch 2.4, `self_cuda_time_total` before
    device_time = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    kernel_us = sum(getattr(e, device_time) for e in events if e.device_type == DeviceType.CUDA)
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    syncs = {e.key: e.count for e in events if e.key in SYNCS}  # on CUDA; the last one is this function's
    summary = {"steps": steps, "ms_per_step": 1000 * wall / steps, "device_ms_per_step": kernel_us / 1000 / steps,
               "launches_per_step": launches / steps, "syncs": syncs}
    on_gpu = (f", device busy {100 * summary['device_ms_per_step'] / summary['ms_per_step']:.0f}%, "
              f"{summary['launches_per_step']:.0f} kernel launches a step; the host waited for the device: "
              f"{syncs or 'never'}") if cuda else ""
    print(f"# profile: {title}, {steps} steps under the profiler: {summary['ms_per_step']:.1f} ms a step{on_gpu}")
    print(events.table(sort_by=device_time if cuda else "self_cpu_time_total", row_limit=rows))
    return summary
