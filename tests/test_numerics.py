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


PROBS = """
import sys, numpy as np, onnxruntime as ort
x = np.random.default_rng(0).integers(0, 256, (16, 144, 144, 3), dtype=np.uint8)
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
np.save(sys.argv[2], session.run(None, {"images": x})[0])
"""


@x86
@pytest.mark.slow  # about 20 s: Python and ONNX Runtime under an emulator
def test_the_ready_int8_model_answers_alike_on_a_cpu_without_vnni(tmp_path):
    """ONNX Runtime picks its int8 kernels by the CPU it finds. qemu's user-mode emulator of an AMD
    EPYC Rome (AVX2, no AVX-512, no VNNI) runs the non-VNNI kernels on any x86 machine: the ready
    model's probabilities there are this machine's to float rounding. The 8-bit file it replaced
    differed by 0.21 on these images (uint8 x int8 sums saturating in 16 bits)."""
    import shutil

    import numpy as np

    from tsloc.serving.ready import resolve
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but qemu-x86_64 is missing (Debian's qemu-user; .ci/run installs it)")
        pytest.skip("qemu-x86_64 not installed (Debian's qemu-user)")
    model = str(resolve("belgiumtsc"))
    subprocess.run([sys.executable, "-c", PROBS, model, tmp_path / "here.npy"], check=True, capture_output=True)
    subprocess.run([qemu, "-cpu", "EPYC-Rome", sys.executable, "-c", PROBS, model, tmp_path / "rome.npy"], check=True,
                   capture_output=True)
    here, rome = np.load(tmp_path / "here.npy"), np.load(tmp_path / "rome.npy")
    assert here.shape == rome.shape == (16, 62)
    assert np.abs(here - rome).max() < 1e-5, np.abs(here - rome).max()
