"""Detection metrics through pycocotools (COCO's evaluation, as torchvision's detection references):
average precision at IoU 0.5 and over 0.5:0.95, for finding signs whatever their class, per class
(finding and naming) and per category; recall at an operating point; precision-recall curves;
and `score_scenes`, all of them for the finder's detections on test frames.

Boxes here are in pixels of the frame, (left, top, right, bottom), right and bottom exclusive;
COCO's are (x, y, width, height) with the same edges, so width = right - left.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from ..data.frames import NO_SIGN


def _coco(truth, detections, category) -> tuple[COCO, COCO | None]:
    """COCO objects of `truth` (the scene table's rows of some frames) and `detections` (dicts with
    frame, box, score and class_id), each box's COCO category `category(class_id)` (None: left out)."""
    frames = {f: i + 1 for i, f in enumerate(dict.fromkeys(truth["frame"]))}
    sizes = truth.groupby("frame")[["width", "height"]].first()
    images = [{"id": i, "file_name": str(f), "width": int(sizes.loc[f, "width"]), "height": int(sizes.loc[f, "height"])}
              for f, i in frames.items()]
    anns, cats = [], set()
    for k, r in enumerate(truth[truth["class_id"] != NO_SIGN].itertuples(index=False), 1):
        c = category(int(r.class_id))
        if c is None:
            continue
        cats.add(c)
        w, h = float(r.right - r.left), float(r.bottom - r.top)
        anns.append({"id": k, "image_id": frames[r.frame], "category_id": c, "bbox": [float(r.left), float(r.top), w, h],
                     "area": w * h, "iscrowd": 0})
    dets = []
    for d in detections:
        c = category(int(d.get("class_id", 0)))
        if c is None:
            continue
        cats.add(c)
        left, top, right, bottom = d["box"]
        dets.append({"image_id": frames[d["frame"]], "category_id": c, "bbox": [left, top, right - left, bottom - top],
                     "score": d["score"]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets) if dets else None
    return gt, dt


def evaluate(truth, detections, category=lambda class_id: 1) -> dict:
    """COCO's bbox evaluation: AP over IoU 0.5:0.95 and at 0.5 (the mean over the categories that
    have a true box), AP at 0.5 per category, and the precision-recall curve at IoU 0.5 over all
    of them (recall 0..1 in 101 steps; the mean over categories where more than one). With no
    detection (or no true box) the curve is still there, flat at 0, as COCO scores a recall never
    reached: an empty one draws no plot at all in `dvc plots show`."""
    gt, dt = _coco(truth, detections, category)
    cats = sorted({a["category_id"] for a in gt.dataset["annotations"]})
    if dt is None or not cats:
        steps = Params(iouType="bbox").recThrs.tolist()
        return {"ap": 0.0, "ap50": 0.0, "ap50_per_category": {c: 0.0 for c in cats}, "pr": (steps, [0.0] * len(steps))}
    ev = COCOeval(gt, dt, "bbox")
    ev.params.catIds = cats
    ev.params.maxDets = [1, 10, 100]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, recall steps, categories, all areas, 100 detections
    per = {c: float(np.mean(p[p > -1])) if (p > -1).any() else 0.0 for c, p in zip(cats, precision.T)}
    curve = np.where(precision > -1, precision, np.nan)
    mean_curve = np.nan_to_num(np.nanmean(curve, axis=1)) if curve.size else np.zeros(0)
    return {"ap": float(max(ev.stats[0], 0)), "ap50": float(max(ev.stats[1], 0)), "ap50_per_category": per,
            "pr": (ev.params.recThrs.tolist(), mean_curve.tolist())}


def recall_at(truth, detections, iou: float = 0.5) -> float:
    """The share of true boxes found by at least one of `detections` (already thresholded) with IoU >= `iou`."""
    import torch
    from torchvision.ops import box_iou
    signs = truth[truth["class_id"] != NO_SIGN]
    if not len(signs):
        return 0.0
    found = 0
    by_frame: dict = {}
    for d in detections:
        by_frame.setdefault(d["frame"], []).append(d["box"])
    for frame, rows in signs.groupby("frame"):
        boxes = by_frame.get(frame)
        if not boxes:
            continue
        iou_m = box_iou(torch.tensor(rows[["left", "top", "right", "bottom"]].to_numpy(np.float32)), torch.tensor(boxes))
        found += int((iou_m.max(1).values >= iou).sum())
    return found / len(signs)


def score_scenes(truth, rows, category: dict, min_score: float, min_probability: float,
                 scored: bool = True) -> tuple[dict, dict, list]:
    """The scene figures of `rows`, the finder's detections on the frames of `truth` (each with
    frame, detector_box, score, box, probability, scene_class_id; -1: a class the scenes lack):
    AP for finding (the detector's boxes and scores), mean AP over the classes and AP per category
    of `category` (scene class id -> name) for finding and naming (the crop model's box and class,
    ranked by score x probability). Every AP ranks every detection, as COCO does: a threshold
    before AP only drops true signs a weak namer is unsure of (GTSDB, docs/scenes.md). Recall and
    precision are at the operating point (`min_score`, `min_probability`: what `tsloc detect`
    keeps). Returns the figures (naming's None unless `scored`), the two precision-recall curves,
    and the kept detections."""
    cat_ids = {c: i for i, c in enumerate(sorted(set(category.values())), 1)}
    found = [{"frame": r["frame"], "box": r["detector_box"], "score": r["score"]} for r in rows]
    named = [{"frame": r["frame"], "box": r["box"], "score": r["score"] * r["probability"],
              "class_id": r["scene_class_id"]} for r in rows]
    finding = evaluate(truth, found)                                                   # whatever the class
    naming = evaluate(truth, named, category=lambda c: c + 1 if c >= 0 else None)      # per class
    by_category = evaluate(truth, named, category=lambda c: cat_ids[category[c]] if c >= 0 else None)
    kept = [{"frame": r["frame"], "box": r["box"], "score": r["score"]} for r in rows
            if r["score"] >= min_score and r["probability"] >= min_probability]
    signs = int((truth["class_id"] != NO_SIGN).sum())
    recall = recall_at(truth, kept)
    figures = {"find_ap50": finding["ap50"], "find_ap": finding["ap"],
               "map50": naming["ap50"] if scored else None, "map": naming["ap"] if scored else None,
               "ap50_category": {c: by_category["ap50_per_category"].get(i, 0.0) if scored else None
                                 for c, i in cat_ids.items()},
               "recall": recall, "precision": recall * signs / len(kept) if kept else 0.0}
    return figures, {"find": finding["pr"], "named": naming["pr"]}, kept
