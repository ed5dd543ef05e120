"""Stage `scenes_evaluate`: find and name the signs of the test frames (the detector, then the crop
model), scored with COCO's evaluation (tsloc.scenes.evaluation): AP at IoU 0.5 for finding signs
whatever their class, mean AP over the classes (finding and naming), COCO's AP at 0.5:0.95, AP
per category (each AP over every detection, ranked by its score, as COCO scores), recall and
precision at the operating point (`detect.*`: what `tsloc detect` keeps), frames per second; the
precision-recall curves for `dvc plots`, and a gallery of the worst test frames.

A crop model that does not know the scene classes (trained on another data set than the scenes:
GTSRB crops beside the synthetic scenes) cannot be scored on naming: one line says which classes,
the naming figures are null, and finding is scored all the same, so that a crop experiment does
not fail for the default scenes beside it."""
from __future__ import annotations

import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plots
from ..data.frames import BOX, NO_SIGN, decode_frame, load_scene_table, subset_frames
from ..device import select_device
from ..errors import DataError
from ..io import write_csv, write_figure, write_json
from ..paths import (DETECTOR, MODEL, SCENE_CLASSES, SCENE_SPLIT, SCENES_DETECTIONS, SCENES_GALLERY, SCENES_METRICS,
                     SCENES_PLOTS, SCENES_REPORT)
from ..scenes.evaluation import recall_at, score_scenes
from ..serving.backend import load_backend, load_detector
from ..serving.find import Finder
from ..serving.namer import match_classes
from . import record_keys, tracked_params

GALLERY = 6  # test frames in the gallery, the worst first


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    split = load_scene_table(SCENE_SPLIT)
    classes = pd.read_csv(SCENE_CLASSES, keep_default_na=False)
    test, paths = subset_frames(split, "test")
    device = select_device(p.detector.device)
    detector = load_detector(DETECTOR, device)
    namer = load_backend(MODEL, device)
    try:
        mapping = match_classes(classes, namer.meta["class_names"])
    except DataError as exc:  # e.g. a GTSRB crop model beside the synthetic scenes: finding is still scored
        print(f"tsloc scenes_evaluate: naming not scored: {exc}", file=sys.stderr)
        mapping = np.full(len(namer.meta["class_names"]), -1)
    finder = Finder(detector, namer)
    rows, seconds = [], 0.0
    for path in paths:
        started = time.perf_counter()
        frame = decode_frame(path)
        found = finder(frame)
        seconds += time.perf_counter() - started
        rows += [{"frame": path, **d, "scene_class_id": int(mapping[d["class_id"]])} for d in found]
    d = p.detect
    category = dict(zip(classes["class_id"], classes["category"]))
    scored = bool((mapping >= 0).any())  # naming is scored when the crop model knows the scene classes
    figures, curves, kept = score_scenes(test, rows, category, d.min_score, d.min_probability, scored)
    signs = test[test["class_id"] != NO_SIGN]
    report = {"test": {"frames": len(paths), "signs": int(len(signs)), **figures,
                       "frames_per_second": len(paths) / seconds if seconds else 0.0},
              "operating_point": {"min_score": d.min_score, "min_probability": d.min_probability},
              "classes_with_test_signs": int(signs["class_id"].nunique()), "device": str(device), "namer": namer.name}
    write_json(SCENES_REPORT, report)
    t = report["test"]
    write_json(SCENES_METRICS, {"test": {k: t[k] for k in ("find_ap50", "map50", "map", "recall", "frames_per_second")}})
    for key, (recall_steps, precision) in curves.items():
        write_csv(SCENES_PLOTS / f"pr_{key}.csv", pd.DataFrame({"recall": recall_steps, "precision": precision}),
                  float_format="%.4f")
    write_csv(SCENES_DETECTIONS, pd.DataFrame(rows), float_format="%.2f")
    _gallery(test, kept, rows, classes)
    record_keys("scenes_evaluate", p)
    return report


def _gallery(test, kept, rows, classes) -> None:
    """The test frames with the most errors at the operating point first: true boxes green, found red."""
    names = classes["name"].tolist()
    by_frame = {}
    for r in kept:
        by_frame.setdefault(r["frame"], []).append(r)
    errors = []
    for frame, part in test.groupby("frame"):
        signs = part[part["class_id"] != NO_SIGN]
        found = by_frame.get(frame, [])
        hit = recall_at(part, found) * len(signs) if len(signs) else 0
        errors.append((len(signs) - hit + max(0, len(found) - hit), frame))
    worst = [f for _, f in sorted(errors, key=lambda e: (-e[0], e[1]))[:GALLERY]]
    named = {(r["frame"], tuple(r["box"])): r for r in rows}
    items = []
    for frame in worst:
        part = test[test["frame"] == frame]
        signs = part[part["class_id"] != NO_SIGN]
        boxes = [(tuple(b), "lime", "-") for b in signs[BOX].to_numpy()]
        boxes += [(tuple(r["box"]), "red", "--") for r in by_frame.get(frame, [])]
        labels = [names[int(named[(frame, tuple(r["box"]))]["scene_class_id"])] if named[(frame, tuple(r["box"]))]["scene_class_id"] >= 0 else "?"
                  for r in by_frame.get(frame, [])]
        items.append({"image": decode_frame(frame), "boxes": boxes,
                      "title": f"{frame.split('/')[-1]}: {len(signs)} true, {len(labels)} found\n" + ", ".join(labels)[:60]})
    fig = plots.gallery(items, cols=2, legend={"true": ("lime", "-"), "found": ("red", "--")})
    write_figure(SCENES_GALLERY, fig)
    plt.close(fig)
