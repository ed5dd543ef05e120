"""Faults and bad input: one message naming the file, a non-zero exit, no output half-written.

Here: a full disk (a real one, and stdout on /dev/full) and CUDA out of memory. The other cases of
issue 16 are tested beside the code they exercise:
- resume after Ctrl-C / kill -9, to the same results: test_loop.py::test_an_interrupted_fit_continues_to_the_same_weights,
  test_pipeline_dvc.py::test_training_killed_midway_continues_to_the_same_results
- `cuda` without CUDA: test_predict.py::test_cuda_asked_for_without_cuda_is_one_clear_error
- truncated or foreign model, weights, hub and ONNX files: test_predict.py::test_missing_and_incompatible_model,
  test_checkpoint.py::test_a_truncated_model_file_is_named, test_weights.py::test_a_truncated_cached_hub_file_is_named,
  test_weights.py::test_weights_files_that_are_bad_or_outside_weights_are_named,
  test_export.py::test_broken_and_foreign_onnx_files_are_one_clear_error
- a model that does not fit the store or the data: test_predict.py::test_evaluate_refuses_a_model_that_does_not_fit_the_store_or_the_data
- params of the wrong type, unknown keys, out-of-range values, `1e-3`: test_params.py::test_bad_values_name_the_key,
  test_params.py::test_numbers_in_exponent_form_are_numbers
- predict on real-world files (EXIF, --draw never overwrites, no images, bombs, symlink loops, bounded
  decoding): test_predict.py
- an interrupted download leaves nothing: test_download.py::test_interrupted_download_leaves_nothing
- a rank of a distributed training that dies, and a distributed run resumed after kill -9:
  test_pipeline_dvc.py::test_train_in_two_processes_matches_one_and_a_dead_rank_ends_it
"""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli, stub_model as _stub


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


@pytest.mark.parametrize("command, advice", [("train", "a smaller train.batch_size (dvc exp run -S train.batch_size=16)"),
                                             ("predict", "a smaller --batch-size")])
def test_cuda_out_of_memory_says_what_to_lower(tmp_path, monkeypatch, command, advice):
    """No GPU here: the stage or predict raises PyTorch's own OutOfMemoryError where a CUDA call would."""
    import importlib

    import torch
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if command == "train":
        monkeypatch.setattr(importlib.import_module("tsloc.pipeline.train"), "run", oom)
        proc = run_cli("train", cwd=tmp_path)
    else:
        import tsloc.serving.predict
        monkeypatch.setattr(tsloc.serving.predict, "predict_files", oom)
        Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
        proc = run_cli("predict", tmp_path / "a.png", "--model", _stub(tmp_path / "stub.pt"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"tsloc {command}: error: out of GPU memory (CUDA out of memory. Tried to allocate")
    assert advice in proc.stderr


@pytest.mark.parametrize("stage, advice", [("detector_train", "-S detector.batch_size=4), or the CPU (-S detector.device=cpu)"),
                                           ("refiner_train", "-S refiner.batch_size=16), or the CPU (-S refiner.device=cpu)"),
                                           ("scenes_evaluate", "the CPU (-S detector.device=cpu)"),
                                           ("evaluate", "the CPU (train.device: cpu)")])
def test_a_stage_out_of_gpu_memory_names_its_own_params(stage, advice, capsys):
    """Each stage that runs on a GPU names the params of its own device and batch (the detector's and the
    refiner's are not train.*); a stage without its own advice gets the general one."""
    import torch

    from tsloc.guard import stage_main
    def oom(params_file):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert stage_main(stage, oom, []) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tsloc {stage}: error: out of GPU memory (CUDA out of memory.") and advice in err, err


@pytest.mark.slow  # a new interpreter, with a real pipe
def test_predict_into_a_reader_that_leaves_is_quiet(tmp_path):
    """`tsloc predict FOLDER | head -1`: the reader closes the pipe early; predict stops, exit 0, no traceback."""
    for i in range(300):
        Image.new("RGB", (24, 24), (i % 256, 0, 0)).save(tmp_path / f"{i:03}.png")
    model = _stub(tmp_path / "stub.pt")
    proc = subprocess.run(f"{sys.executable} -m tsloc.cli predict {tmp_path} --model {model} --batch-size 4 | head -1",
                          shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr and "Error" not in proc.stderr, \
        proc.stderr
    piped = subprocess.run(f"set -o pipefail; {sys.executable} -m tsloc.cli predict {tmp_path} --model {model} "
                           "--batch-size 4 | head -1 > /dev/null", shell=True, executable="/bin/bash")
    assert piped.returncode == 0
