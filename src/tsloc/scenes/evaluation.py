"""Detection metrics through pycocotools (COCO's evaluation, as torchvision's detection references):
average precision at IoU 0.5 and over 0.5:0.95, for finding signs whatever their class, per class
(finding and naming) and per category; precision-recall curves (the scenes_evaluate stage scores the
finder's detections on the test frames with them, tsloc.pipeline.scenes_evaluate.score_scenes).

Boxes here are in pixels of the frame, (left, top, right, bottom), right and bottom exclusive;
COCO's are (x, y, width, height) with the same edges, so width = right - left.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from ..data.frames import NO_SIGN

# One reported box against the true ones (tsloc.scenes.operating_point's error kinds, the detector's
# hard negatives): IoU >= MATCH_IOU finds a sign, LOOSE_IOU to MATCH_IOU boxes it badly, under it is background
MATCH_IOU, LOOSE_IOU = 0.5, 0.1


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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (rows) with every box of `b` (columns), (left, top, right, bottom) in
    pixels, by pycocotools (which reads C-ordered arrays only: a pandas column block is not one)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    xywh = lambda x: np.ascontiguousarray(np.c_[x[:, :2], x[:, 2:] - x[:, :2]], np.float64)  # noqa: E731
    return np.asarray(coco_mask.iou(xywh(np.asarray(a, np.float64)), xywh(np.asarray(b, np.float64)),
                                    np.zeros(len(b), np.uint8))).reshape(len(a), len(b))


def _ap(precision: np.ndarray) -> float:
    """The mean of COCO's precision cells that exist (-1: a category without a true box), else 0."""
    kept = precision[precision > -1]
    return float(np.mean(kept)) if kept.size else 0.0


def evaluate(truth, detections, category=lambda class_id: 1) -> dict:
    """COCO's bbox evaluation: AP over IoU 0.5:0.95 and at 0.5 (the mean over the categories that
    have a true box) and at each of COCO's ten IoU thresholds, AP at 0.5 per category, and the
    precision-recall curve at IoU 0.5 over all of them (recall 0..1 in 101 steps; the mean over
    categories where more than one). With no detection (or no true box) the curve is still there,
    flat at 0, as COCO scores a recall never reached: an empty one draws no plot at all in `dvc plots show`."""
    gt, dt = _coco(truth, detections, category)
    cats = sorted({a["category_id"] for a in gt.dataset["annotations"]})
    if dt is None or not cats:
        params = Params(iouType="bbox")
        steps = params.recThrs.tolist()
        return {"ap": 0.0, "ap50": 0.0, "ap_per_iou": [0.0] * len(params.iouThrs),
                "ap50_per_category": {c: 0.0 for c in cats}, "pr": (steps, [0.0] * len(steps))}
    ev = COCOeval(gt, dt, "bbox")
    ev.params.catIds = cats
    ev.params.maxDets = [1, 10, 100]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    every = ev.eval["precision"][..., 0, 2]  # IoU thresholds, recall steps, categories: all areas, 100 detections
    precision = every[0]  # at IoU 0.5
    curve = np.where(precision > -1, precision, np.nan)
    mean_curve = np.nan_to_num(np.nanmean(curve, axis=1)) if curve.size else np.zeros(0)
    return {"ap": float(max(ev.stats[0], 0)), "ap50": float(max(ev.stats[1], 0)), "ap_per_iou": [_ap(p) for p in every],
            "ap50_per_category": {c: _ap(p) for c, p in zip(cats, precision.T)},
            "pr": (ev.params.recThrs.tolist(), mean_curve.tolist())}
