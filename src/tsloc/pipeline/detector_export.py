"""Stage `detector_export`: models/detector.onnx (fp32) and models/detector.int8.onnx (static int8,
calibrated on training frames) from models/detector.pt, each scored on the validation frames
against the PyTorch detector (reports/detector_export.json), with its frames per second.

The fp32 file must find what PyTorch finds (PARITY) or the stage fails and writes nothing. The
int8 file is always written and scored; its metadata says whether it kept AP50 within
`detector_export.max_ap50_loss` of fp32, and `tsloc detect` takes it by default only then."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data.frames import FrameFiles, ahead, decode_frames, load_scene_table, subset_frames
from ..errors import ExportError
from ..io import write_json
from ..onnxfile import read_meta, set_meta
from ..paths import DETECTOR, DETECTOR_EXPORT_REPORT, DETECTOR_INT8, DETECTOR_ONNX, SCENE_SPLIT
from ..quantize import quantize_int8
from ..scenes import model as det
from ..scenes.evaluation import evaluate
from ..scenes.export import export_detector
from ..serving.backend import load_detector
from . import record_keys, tracked_params

# fp32 ONNX against PyTorch on the validation frames, detections scoring at least min_score: the same
# number in every frame, scores within max_score_difference, boxes within max_box_difference pixels but
# for at most max_share_beyond of them, and the same AP50 within max_ap50_difference. The share: where
# two candidates score alike to the sixth digit, float rounding decides which one NMS keeps (seen on
# GTSDB: one box moved 24 px, its score equal to 3e-6), or which one is the last of the best 50 a frame
# keeps (GTSDB's validation frames have 50 over 0.1: one 50th box was another 193 px away). Scores are
# compared between the detections that are each other's (within max_box_difference).
PARITY = {"min_score": 0.1, "max_box_difference": 0.5, "max_score_difference": 1e-3, "max_share_beyond": 0.01,
          "max_ap50_difference": 0.002}


def agreement(found: list, reference: list) -> dict:
    """How far `found` is from `reference` (lists of (boxes, scores) per frame) over detections scoring at
    least PARITY's min_score: frames with another count, the largest box difference, the largest score
    difference between detections that are each other's, and how many of the detections' boxes lie
    beyond PARITY's max_box_difference (replaced by another at a near tie)."""
    other, box, score, detections, beyond = 0, 0.0, 0.0, 0, 0
    for (b, s), (rb, rs) in zip(found, reference):
        b, s = b[s >= PARITY["min_score"]], s[s >= PARITY["min_score"]]
        rb, rs = rb[rs >= PARITY["min_score"]], rs[rs >= PARITY["min_score"]]
        if len(b) != len(rb):
            other += 1
            continue
        if len(b):
            # pair each reference detection with its nearest found one (their orders may swap on near ties)
            cost = np.abs(rb[:, None, :] - b[None, :, :]).max(-1)
            nearest = cost.argmin(1)
            distance = cost[np.arange(len(rb)), nearest]
            box = max(box, float(distance.max()))
            detections += len(rb)
            close = distance <= PARITY["max_box_difference"]
            beyond += int((~close).sum())
            if close.any():
                score = max(score, float(np.abs(rs[close] - s[nearest[close]]).max()))
    return {"frames_differing": other, "max_box_difference": box, "max_score_difference": score,
            "detections": detections, "boxes_beyond": beyond}


def agrees(parity: dict, ap50_difference: float) -> bool:
    """Whether the fp32 export answers as the PyTorch detector does, by PARITY."""
    return (parity["frames_differing"] == 0 and parity["max_score_difference"] <= PARITY["max_score_difference"]
            and parity["boxes_beyond"] <= PARITY["max_share_beyond"] * parity["detections"]
            and abs(ap50_difference) <= PARITY["max_ap50_difference"])


def score(detector, frames, paths, valid) -> tuple[dict, list]:
    """AP on the validation frames (FrameFiles: decoded a frame ahead in a thread, none held) and frames
    per second (the detector alone: decoding not timed)."""
    found, seconds = [], 0.0
    for frame in ahead(frames):
        started = time.perf_counter()
        found.append(detector(frame))
        seconds += time.perf_counter() - started
    detections = [{"frame": p, "box": b.tolist(), "score": float(s)}
                  for p, (boxes, scores) in zip(paths, found) for b, s in zip(boxes, scores)]
    ap = evaluate(valid, detections)
    return {"ap50": ap["ap50"], "ap": ap["ap"], "frames_per_second": round(len(frames) / seconds, 2)}, found


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    e = p.detector_export
    split = load_scene_table(SCENE_SPLIT)
    valid, paths = subset_frames(split, "valid")
    frames = FrameFiles(paths)
    train = subset_frames(split, "train")[1]
    picked = np.sort(np.random.default_rng(e.seed).choice(len(train), min(e.calibration_frames, len(train)), replace=False))
    calibration = decode_frames([train[i] for i in picked])
    model, ckpt = det.load(DETECTOR)
    report = {"valid_frames": len(paths), "parity_required": PARITY, "max_ap50_loss": e.max_ap50_loss}
    report["pytorch"], reference = score(det.TorchDetector(model, ckpt), frames, paths, valid)  # the file read once
    with tempfile.TemporaryDirectory(prefix=".detector_export.", dir=DETECTOR.parent) as scratch:
        fp32 = export_detector(model, ckpt, Path(scratch) / DETECTOR_ONNX.name)
        report["onnx_fp32"], found = score(load_detector(fp32, refine=False), frames, paths, valid)
        report["onnx_fp32"]["against_pytorch"] = parity = agreement(found, reference)
        if not agrees(parity, report["onnx_fp32"]["ap50"] - report["pytorch"]["ap50"]):
            raise ExportError(f"{DETECTOR_ONNX}: the ONNX export does not find what the PyTorch detector finds on the "
                              f"validation frames ({parity}; needed {PARITY}); nothing written")
        int8 = quantize_int8(fp32, Path(scratch) / DETECTOR_INT8.name, calibration, float_convs=e.float_convs,
                             batch_size=None, seed=e.seed, input_name="frame", symbolic_shapes=False)
        report["onnx_int8"], _ = score(load_detector(int8, refine=False), frames, paths, valid)
        loss = report["onnx_fp32"]["ap50"] - report["onnx_int8"]["ap50"]
        report["onnx_int8"]["ap50_loss"] = round(loss, 4)
        report["onnx_int8"]["kept"] = kept = bool(loss <= e.max_ap50_loss)
        meta = read_meta(int8)
        meta["export"].update(valid_ap50=report["onnx_int8"]["ap50"], valid_ap50_loss=round(loss, 4), kept=kept)
        set_meta(int8, meta)
        for key, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
            report[key]["megabytes"] = round(path.stat().st_size / 2**20, 2)
        os.replace(fp32, DETECTOR_ONNX)
        os.replace(int8, DETECTOR_INT8)
    write_json(DETECTOR_EXPORT_REPORT, report)
    record_keys("detector_export", p)
    return report
