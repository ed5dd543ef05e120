"""Stage `export`: models/model.onnx (fp32) and models/model.int8.onnx (static int8, calibrated on
training images from the image store) from models/model.pt, and how each scores on the test set
against the PyTorch model (reports/export.json).

The fp32 file must give the PyTorch model's answers (PARITY): if it does not, the stage fails and
writes nothing. The int8 file is scored and reported, whatever it loses.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..crops import checkpoint
from ..crops.evaluation import agreement, constant_box, evaluate_subset, predict_images
from ..crops.export import FORMATS, export
from ..crops.inference import TorchBackend
from ..errors import ExportError
from ..io import write_json
from ..params import load_params
from ..paths import EXPORT_REPORT, IMAGE_STORE, INT8, MODEL, ONNX, SPLIT_TABLE
from ..quantize import quantize_int8
from ..serving.backend import load_backend
from . import load, record_keys, subset_rows, tracked_params

# fp32 ONNX against PyTorch on the test set: the same class for at least this share of images, and
# boxes within this much of the image's width and height.
PARITY = {"same_class": 0.999, "max_box_difference": 1e-3}


def calibration_rows(split, n: int, seed: int) -> np.ndarray:
    """`n` training rows drawn with `seed` (all of them when there are fewer), in store order."""
    rows = subset_rows(split, "train")
    return np.sort(np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False))


def int8_from(fp32: Path, out: Path, split, store, params) -> Path:
    """The int8 file of an fp32 export, calibrated as `export.*` says on this pipeline's training images."""
    rows = calibration_rows(split, params.calibration_images, params.seed)
    return quantize_int8(fp32, out, np.asarray(store[rows]), float_convs=params.float_convs, seed=params.seed)


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    split = load(SPLIT_TABLE, "split")
    store = load(IMAGE_STORE, "features")
    model, ckpt = checkpoint.load(MODEL)
    checkpoint.check_fits(ckpt, store, split, MODEL)
    rows = subset_rows(split, "test")
    test, images, baseline = split.iloc[rows], np.asarray(store[rows]), constant_box(split)
    reference = predict_images(TorchBackend(model, ckpt), images)
    report = {"test": {"pytorch": {"file": str(MODEL), **evaluate_subset(reference, test, baseline)[0]}}}
    # Written beside the outputs first and renamed into place only when every file is done and the
    # fp32 file passed: a failed or interrupted export leaves the previous files as they were.
    with tempfile.TemporaryDirectory(prefix=".export.", dir=MODEL.parent) as scratch:
        made = {ONNX: export(model, ckpt, "onnx", Path(scratch) / ONNX.name)}
        made[INT8] = int8_from(made[ONNX], Path(scratch) / INT8.name, split, store, p.export)
        for final, path in made.items():
            pred = predict_images(load_backend(path), images)
            precision = "int8" if final == INT8 else "fp32"
            report["test"][f"onnx_{precision}"] = {
                "file": str(final), "megabytes": round(path.stat().st_size / 2**20, 2),
                **evaluate_subset(pred, test, baseline)[0], "against_pytorch": agreement(pred, reference)}
        fp32 = report["test"]["onnx_fp32"]["against_pytorch"]
        if fp32["same_class"] < PARITY["same_class"] or fp32["max_box_difference"] > PARITY["max_box_difference"]:
            raise ExportError(f"{ONNX}: the ONNX export does not give the PyTorch model's answers on the test set "
                              f"(same class for {100 * fp32['same_class']:.2f}% of images, boxes up to "
                              f"{fp32['max_box_difference']:.2g} apart; needed {PARITY}); nothing written")
        for final, path in made.items():
            os.replace(path, final)
    report["parity_required"] = PARITY
    write_json(EXPORT_REPORT, report)
    record_keys("export", p)
    return report


def export_one(params_file: str, model_path: str, fmt: str = "onnx", quantize: str | None = None,
               out: str | None = None) -> Path:
    """One file from any checkpoint (`tsloc export --model ... --format ... [--quantize int8]`), beside it
    unless `out` says where; int8 is calibrated as the stage does, on this pipeline's image store."""
    model, ckpt = checkpoint.load(model_path)
    if quantize and fmt != "onnx":
        raise ExportError(f"--quantize {quantize} is for ONNX files: add --format onnx")
    if not quantize:
        return export(model, ckpt, fmt, out or Path(model_path).with_suffix(FORMATS[fmt]))
    p = load_params(params_file)
    split = load(SPLIT_TABLE, "split")
    store = load(IMAGE_STORE, "features")
    checkpoint.check_fits(ckpt, store, split, model_path)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export(model, ckpt, "onnx", Path(scratch) / "model.onnx")
        return int8_from(fp32, Path(out or Path(model_path).with_suffix(".int8.onnx")), split, store, p.export)
