"""Faults from outside the data: a full disk. One message naming the file, exit status 2, and no
output half-written (tsloc.io.atomic_path)."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli
from test_predict import _stub


@pytest.fixture
def small_disk(tmp_path):
    """A real full disk: a 160 KiB tmpfs (root and mount needed; skipped where it cannot be made)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_during_a_stage_is_one_message_and_nothing_half_written(tmp_path, small_disk):
    """The split stage on a disk with room for its inputs and the split table, not for its plots."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "params.yaml").write_text("data:\n  synthetic:\n    size: 300\n")
    assert run_cli("ingest", cwd=source).returncode == 0
    (small_disk / "data").mkdir()
    for name in ("params.yaml", "data/metadata.csv", "data/classes.csv"):
        (small_disk / name).write_bytes((source / name).read_bytes())
    proc = run_cli("split", cwd=small_disk)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("tsloc split: error: ") and ": no space left on device; free some space" \
        in proc.stderr, proc.stderr
    written = [p for p in small_disk.rglob("*") if p.is_file()]
    assert not [p for p in written if ".tmp" in p.name], written  # temporary files removed
    for path in written:  # whatever is there is whole
        if path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".png":
            Image.open(path).verify()
    named = proc.stderr.split("error: ", 1)[1].split(":", 1)[0]
    assert not (small_disk / named).exists()  # the file that did not fit is absent, not truncated


@pytest.mark.slow  # a new interpreter, so that stdout is a real file
def test_predict_onto_a_full_disk_is_one_message(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "predict", str(tmp_path / "a.png"), "--model",
                               str(_stub(tmp_path / "stub.pt"))], stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tsloc predict: error: an output: no space left on device" in proc.stderr, proc.stderr
