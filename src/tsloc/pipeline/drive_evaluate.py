"""Stage `drive_evaluate`: `tsloc detect --track --inventory --gpx` on the drive's video (the pipeline's
ONNX detector and namer, and the operating point, as `tsloc detect` picks them), scored against its
true tracks (tsloc.scenes.tracking): IDF1, identity switches and MOTA; the inventory's precision,
recall and class accuracy (a sign counted once, with its class), its rows placed on the drive's GPX
track (inventory.geojson beside the CSV); frames per second end to end (decoding, finding, naming,
tracking). A timeline of the true signs and the inventory's rows for `dvc plots`."""
from __future__ import annotations

import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..errors import DataError
from ..io import write_csv, write_figure, write_json
from ..params import TrackParams
from ..paths import (DRIVE_CLASSES, DRIVE_GPX, DRIVE_INVENTORY, DRIVE_METRICS, DRIVE_REPORT, DRIVE_TIMELINE,
                     DRIVE_TRACKS, DRIVE_TRUTH, DRIVE_VIDEO, ONNX)
from ..scenes.tracking import score_inventory, score_tracks
from ..serving.backend import default_detector, load_backend, load_detector
from ..serving.detect import detect_video
from ..serving.find import Finder, operating_point
from ..serving.geo import read_gpx
from ..serving.namer import match_classes
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    truth = pd.read_csv(DRIVE_TRUTH)
    classes = pd.read_csv(DRIVE_CLASSES, keep_default_na=False)
    detector_file = default_detector()
    detector = load_detector(detector_file)
    point = operating_point(detector, detector_file, p.detect.min_score, p.detect.min_probability)
    finder = Finder(detector, load_backend(ONNX), box=point["box"], vote_iou=point["vote_iou"])
    try:
        mapping = match_classes(classes, finder.namer.meta["class_names"])  # the namer's ids as the drive's
    except DataError as exc:  # a crop model of other signs (GTSRB's twin): tracking and counting still scored
        print(f"tsloc drive_evaluate: classes not scored: {exc}", file=sys.stderr)
        mapping = np.full(len(finder.namer.meta["class_names"]), -1)
    found, frames = [], []

    def keep(rec):
        frames.append(rec["frame"])
        found.extend({"frame": rec["frame"], "track_id": d["track_id"], **dict(zip(("left", "top", "right", "bottom"),
                      d["box"])), "class_id": int(mapping[d["class_id"]]), "score": d["score"],
                      "probability": d["probability"]} for d in rec["detections"])

    started = time.perf_counter()
    rows = detect_video(finder, DRIVE_VIDEO, min_score=point["min_score"],
                        min_probability=point["min_probability"], every=p.drive.every, track=TrackParams(**p.track.as_dict()),
                        inventory=DRIVE_INVENTORY, gpx=read_gpx(DRIVE_GPX), emit=keep, progress=True)
    seconds = time.perf_counter() - started
    for r in rows:
        r["class_id"] = int(mapping[r["class_id"]])
    found = pd.DataFrame(found, columns=["frame", "track_id", "left", "top", "right", "bottom", "class_id", "score",
                                         "probability"])
    tracking = score_tracks(truth, found, frames)
    inventory = score_inventory(truth, rows)
    if not (mapping >= 0).any():
        inventory.update(class_accuracy=None, right_class_recall=None)
    speed = len(frames) / seconds
    inventory["placed"] = sum(r["lat"] is not None for r in rows)  # on the GPX track
    report = {"frames": len(frames), "every": p.drive.every, "operating_point": point, "tracking": tracking,
              "inventory": inventory,
              "frames_per_second": speed, "detector": str(detector_file), "namer": str(ONNX)}
    write_json(DRIVE_REPORT, report)
    write_json(DRIVE_METRICS, {"tracking": {k: tracking[k] for k in ("idf1", "id_switches", "mota")},
                               "inventory": {k: inventory[k] for k in ("precision", "recall", "class_accuracy")},
                               "frames_per_second": speed})
    write_csv(DRIVE_TRACKS, found, float_format="%.2f")
    _timeline(truth, rows, classes["name"].tolist())
    record_keys("drive_evaluate", p)
    return report


def _timeline(truth: pd.DataFrame, rows: list[dict], names: list[str]) -> None:
    """Each true sign's time in view (grey, its class) under the inventory's rows (blue, the class they say)."""
    spans = truth.groupby("track_id").agg(first=("time", "min"), last=("time", "max"), class_id=("class_id", "first")).sort_values("first")
    fig, ax = plt.subplots(figsize=(9, 0.35 * (len(spans) + len(rows)) + 1.2))
    for y, (track_id, s) in enumerate(spans.iterrows()):
        ax.barh(y, s["last"] - s["first"], left=s["first"], height=0.6, color="lightgrey")
        ax.text(s["last"], y, f" {names[int(s['class_id'])][:28]}", va="center", fontsize=7)
    for k, r in enumerate(rows):
        ax.barh(len(spans) + k, r["last_time"] - r["first_time"], left=r["first_time"], height=0.6, color="tab:blue")
        said = names[r["class_id"]][:28] if r["class_id"] >= 0 else "(a class of another data set)"
        ax.text(r["last_time"], len(spans) + k, f" row {r['track_id']}: {said}", va="center",
                fontsize=7)
    ax.set_yticks(range(len(spans) + len(rows)), [f"sign {t}" for t in spans.index] +
                  [f"row {r['track_id']}" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("The drive: true signs in view (grey) and the inventory's rows (blue)")
    write_figure(DRIVE_TIMELINE, fig)
    plt.close(fig)
