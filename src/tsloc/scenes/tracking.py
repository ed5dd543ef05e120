"""Tracking and inventory metrics on a video with true tracks (the synthetic drive): CLEAR MOT and the
identity metrics through py-motmetrics (IDF1, identity switches, MOTA; boxes matched at IoU 0.5,
pycocotools' IoU), and the inventory scored sign by sign: each row's best view matched to the true
sign it boxes; a true sign found by one row is a hit, a second row for it a duplicate.

Only the frames that were searched are scored (`--every N` searches every Nth).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.frames import BOX
from .evaluation import box_iou

IOU = 0.5
MOT_METRICS = {"idf1": "idf1", "num_switches": "id_switches", "mota": "mota", "motp": "motp_iou",  # motmetrics': ours
               "precision": "box_precision", "recall": "box_recall", "num_unique_objects": "signs",
               "mostly_tracked": "mostly_tracked", "num_fragmentations": "fragmentations"}


def score_tracks(truth: pd.DataFrame, found: pd.DataFrame, frames: list[int]) -> dict:
    """`truth` and `found`: one row per box (frame, track_id, left, top, right, bottom); `frames`: the
    frames searched. Rows of `found` without a track id are left out (not yet confirmed tracks)."""
    import motmetrics as mm
    acc = mm.MOTAccumulator(auto_id=False)
    found = found.dropna(subset=["track_id"])
    by_truth, by_found = dict(list(truth.groupby("frame"))), dict(list(found.groupby("frame")))
    empty = truth.iloc[:0]
    for frame in frames:
        t, f = by_truth.get(frame, empty), by_found.get(frame, empty)
        iou = box_iou(t[BOX].to_numpy(), f[BOX].to_numpy())
        distances = np.where(iou >= IOU, 1 - iou, np.nan)  # motmetrics: NaN is "cannot match"
        acc.update(t["track_id"].astype(int).tolist(), f["track_id"].astype(int).tolist(), distances, frameid=frame)
    summary = mm.metrics.create().compute(acc, metrics=list(MOT_METRICS), name="drive").iloc[0]
    out = {ours: float(summary[theirs]) for theirs, ours in MOT_METRICS.items()}
    out["motp_iou"] = 1 - out["motp_iou"] if np.isfinite(out["motp_iou"]) else 0.0  # motmetrics': a mean distance
    return out | {k: int(out[k]) for k in ("id_switches", "signs", "mostly_tracked", "fragmentations")}


def score_inventory(truth: pd.DataFrame, rows: list[dict]) -> dict:
    """The inventory against the true signs: precision (rows that are a sign not already counted),
    recall (signs counted), class accuracy (of the signs counted, by their first row), duplicates."""
    signs = truth["track_id"].nunique()
    by_frame = dict(list(truth.groupby("frame")))
    counted: dict[int, bool] = {}
    duplicates = misses = 0
    for r in rows:
        t = by_frame.get(r["best_frame"], truth.iloc[:0])
        iou = box_iou(t[BOX].to_numpy(), np.array([[r[k] for k in BOX]], np.float64))[:, 0]
        if not len(iou) or iou.max() < IOU:
            misses += 1  # boxes nothing true: background
            continue
        sign = t.iloc[int(iou.argmax())]
        if int(sign["track_id"]) in counted:
            duplicates += 1
            continue
        counted[int(sign["track_id"])] = int(sign["class_id"]) == int(r["class_id"])
    right = sum(counted.values())
    return {"rows": len(rows), "signs": int(signs), "precision": len(counted) / len(rows) if rows else 0.0,
            "recall": len(counted) / signs if signs else 0.0, "class_accuracy": right / len(counted) if counted else 0.0,
            "right_class_recall": right / signs if signs else 0.0, "duplicates": duplicates, "background": misses}
