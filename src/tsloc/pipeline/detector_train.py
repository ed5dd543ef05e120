"""Stage `detector_train`: the class-agnostic detector trained on windows of the training frames,
scored on the validation frames (whole frames, COCO's AP at IoU 0.5 and 0.5:0.95), written to
models/detector.pt."""
from __future__ import annotations

import time

import torch

from ..data.frames import FrameFiles, boxes_and_sizes, load_scene_table, subset_frames
from ..data.images import open_rgb
from ..device import peak_memory, select_device
from ..io import write_json
from ..paths import DETECTOR, DETECTOR_LIVE, DETECTOR_METRICS, DETECTOR_REPORT, DETECTOR_RESUME, SCENE_SPLIT
from ..resume import Resume, resume_key
from ..scenes import model as det
from ..scenes.loop import evaluate, fit_detector
from . import log_epoch, open_live, record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:

    p = tracked_params(params_file)
    d = p.detector
    split = load_scene_table(SCENE_SPLIT)
    train, train_paths = subset_frames(split, "train")
    train_boxes, train_sizes = boxes_and_sizes(train, train_paths)
    valid, valid_paths = subset_frames(split, "valid")
    device = select_device(d.device)
    config = det.architecture(d)
    model = det.build_detector(d.weights, **config, seed=d.seed)  # the same start in every run
    resume = Resume(DETECTOR_RESUME, resume_key(d.as_dict(), read=(SCENE_SPLIT,)))
    done = resume.epochs_done()
    started = time.perf_counter()
    with open_live(DETECTOR_LIVE, resumed=bool(done)) as live:
        live.step = done

        def log(epoch, row):
            log_epoch(live, {"train": row})
        last = fit_detector(model, FrameFiles(train_paths, open_rgb), train_boxes, train_sizes, d, device=device, log=log, resume=resume)
    minutes = (time.perf_counter() - started) / 60
    scores = evaluate(model, valid, FrameFiles(valid_paths), device)
    det.save(DETECTOR, model, config, window=d.window, epochs=d.epochs, trained_on=len(train_paths))
    resume.path.unlink(missing_ok=True)
    report = {"valid": {"frames": len(valid_paths), "ap50": scores["ap50"], "ap": scores["ap"]},
              "last_epoch": last, "train_minutes": round(minutes, 2), "train_frames": len(train_paths),
              "device": str(device), "threads": torch.get_num_threads(),
              "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "resumed_after_epoch": done, **peak_memory(device)}
    write_json(DETECTOR_REPORT, report)
    write_json(DETECTOR_METRICS, {"valid": {"ap50": scores["ap50"], "ap": scores["ap"]}, "train_minutes": report["train_minutes"]})
    record_keys("detector_train", p)
    return report
