"""An inference-only install (`pip install tsloc`, no `train` extra) in a fresh virtual environment
with no PyTorch: `tsloc predict` with the ready model and an ONNX file, `tsloc.load`, and `tsloc serve`
answering over HTTP. Slow: it installs the package and its dependencies (from pip's cache, or the index)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_predict_and_serve_run_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, tsloc = venv / "bin" / "python", venv / "bin" / "tsloc"
    source = tmp_path / "source"  # pip builds in the tree it is given (build/, *.egg-info): not in the repository
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0  # no PyTorch here
    assert subprocess.run([str(py), "-c", "import torchvision"], capture_output=True).returncode != 0
    sign = tmp_path / "sign.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(sign)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    proc = subprocess.run([str(tsloc), "predict", str(sign), "--model", "belgiumtsc"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert 0 <= record["class_id"] < 62 and len(record["top_k"]) == 5 and record["path"] == str(sign)

    api = ("import sys, tsloc; m = tsloc.load('belgiumtsc'); r = m.predict(sys.argv[1]); "
           "print(r['class_id'], 'torch' in sys.modules, 'torchvision' in sys.modules)")
    proc = subprocess.run([str(py), "-c", api, str(sign)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and proc.stdout.split() == [str(record["class_id"]), "False", "False"], proc.stderr

    port = _free_port()
    server = subprocess.Popen([str(tsloc), "serve", "--model", "belgiumtsc", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        request = urllib.request.Request(base + "/v1/predict", data=sign.read_bytes(),
                                         headers={"Content-Type": "image/png"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        info = json.loads(urllib.request.urlopen(base + "/v1/model", timeout=30).read())
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert {k: v for k, v in answer.items() if k != "path"} == {k: v for k, v in record.items() if k != "path"}
    assert info["model"]["data"]["name"].startswith("BelgiumTSC") and info["model"]["test"]["accuracy"] > 0.98
    assert "POST /v1/predict 200" in log
