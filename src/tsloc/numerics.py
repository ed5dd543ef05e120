"""The same CPU arithmetic on every x86 machine, so that a clone's `dvc repro` gives the committed
metrics. PyTorch's CPU kernels (its own, oneDNN's convolutions, MKL's) are chosen by instruction
set at run time, and AVX-512 kernels sum in another order than AVX2 ones: the default pipeline's
detector scored validation AP 0.697 on an AVX-512 machine and 0.656 on an AVX2 one, and this
machine gives 0.656 too once its kernels are capped at AVX2 (docs/pipeline.md, *Reproducing on
another machine*). The stages therefore cap them at AVX2, which every x86-64 CPU of the last decade
has, unless TSLOC_CPU_KERNELS=native asks for the machine's fastest. The thread count matters too
(reductions split by thread): the committed metrics are 2 threads' (OMP_NUM_THREADS=2)."""
from __future__ import annotations

import os
import platform
import sys

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def pin_cpu_kernels() -> bool:
    """Cap PyTorch's CPU kernels at AVX2 (before torch is imported: the libraries read these once).
    False where it does not apply: TSLOC_CPU_KERNELS=native, not x86, or torch already imported
    (a caller's own process: the pipeline's stages run in their own)."""
    if os.environ.get("TSLOC_CPU_KERNELS", "portable") == "native" or "torch" in sys.modules:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    for key, value in PORTABLE.items():
        os.environ.setdefault(key, value)  # a user's own setting wins
    return True


def bf16_kernels_capped() -> str | None:
    """The cap on this process's oneDNN kernels where it is AVX2 or below (the cap above, or a user's
    own; None otherwise): there oneDNN has no bf16 convolutions and PyTorch falls back to its slow
    reference ones (a bf16 training step about 20x slower than fp32's on a CPU whose own kernels run bf16)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return cap if cap.upper() in ("SSE41", "AVX", "AVX2") else None
