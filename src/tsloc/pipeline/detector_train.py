"""Stage `detector_train`: the class-agnostic detector trained on windows of the training frames,
scored on the validation frames (whole frames, COCO's AP at IoU 0.5 and 0.5:0.95), written to
models/detector.pt."""
from __future__ import annotations

import hashlib
import json
import time

from ..data.frames import FrameFiles, boxes_and_sizes, load_scene_table, subset_frames
from ..data.images import open_rgb
from ..device import select_device
from ..io import significant, write_json
from ..params import record_keys
from ..paths import DETECTOR, DETECTOR_LIVE, DETECTOR_METRICS, DETECTOR_REPORT, DETECTOR_RESUME, SCENE_SPLIT
from ..resume import Resume
from ..scenes import detector as det
from ..scenes.fit import detect, fit_detector
from ..scenes.metrics import evaluate
from . import tracked_params


def run(params_file: str = "params.yaml") -> dict:
    from dvclive import Live

    p = tracked_params(params_file)
    d = p.detector
    split = load_scene_table(SCENE_SPLIT)
    train, train_paths = subset_frames(split, "train")
    train_boxes, train_sizes = boxes_and_sizes(train, train_paths)
    valid, valid_paths = subset_frames(split, "valid")
    device = select_device(d.device)
    config = det.architecture(d)
    model = det.build_detector(d.weights, **config, seed=d.seed)  # the same start in every run
    key = hashlib.sha256(json.dumps(d.as_dict(), sort_keys=True).encode() + SCENE_SPLIT.read_bytes()).hexdigest()
    resume = Resume(DETECTOR_RESUME, key)
    done = resume.epochs_done()
    started = time.perf_counter()
    with Live(str(DETECTOR_LIVE), dvcyaml=False, save_dvc_exp=False, resume=bool(done)) as live:
        live.step = done

        def log(epoch, row):
            for name, value in row.items():
                live.log_metric(f"train/{name}", significant(value) if isinstance(value, float) else value)
            live.next_step()
        last = fit_detector(model, FrameFiles(train_paths, open_rgb), train_boxes, train_sizes, d, device=device, log=log, resume=resume)
    minutes = (time.perf_counter() - started) / 60
    found = detect(model, FrameFiles(valid_paths), device, "validation frames")
    detections = [{"frame": f, "box": b.tolist(), "score": float(s)}
                  for f, r in zip(valid_paths, found) for b, s in zip(r["boxes"], r["scores"])]
    scores = evaluate(valid, detections)
    det.save(DETECTOR, model, config, window=d.window, epochs=d.epochs, trained_on=len(train_paths))
    resume.path.unlink(missing_ok=True)
    report = {"valid": {"frames": len(valid_paths), "ap50": scores["ap50"], "ap": scores["ap"]},
              "last_epoch": last, "train_minutes": round(minutes, 2), "train_frames": len(train_paths),
              "device": str(device), "resumed_after_epoch": done}
    write_json(DETECTOR_REPORT, report)
    write_json(DETECTOR_METRICS, {"valid": {"ap50": scores["ap50"], "ap": scores["ap"]}, "train_minutes": report["train_minutes"]})
    record_keys("detector_train", p)
    return report
