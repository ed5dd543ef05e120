"""The stages' CPU kernels are capped at AVX2 (tsloc.numerics), so that `dvc repro` computes alike
on every x86 machine; a user can ask for the machine's own with TSLOC_CPU_KERNELS=native."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CAPABILITY = "import tsloc.pipeline, torch; print(torch.backends.cpu.get_cpu_capability())"
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")


def _capability(**env) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "TSLOC_CPU_KERNELS")}
    proc = subprocess.run([sys.executable, "-c", CAPABILITY], env=clean | env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


@x86
def test_a_stage_process_runs_avx2_kernels_and_native_is_the_machines_own():
    import torch
    native = _capability(TSLOC_CPU_KERNELS="native")
    assert native == torch.backends.cpu.get_cpu_capability() or native.startswith("AVX")
    assert _capability() == "AVX2"  # what every x86 machine with AVX2 computes with: the committed metrics'
    assert _capability(ATEN_CPU_CAPABILITY="default") == "DEFAULT"  # a user's own setting wins
