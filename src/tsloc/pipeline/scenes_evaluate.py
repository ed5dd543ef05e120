"""Stage `scenes_evaluate`: find and name the signs of the validation and test frames (the detector,
then the crop model); choose the operating point on validation (tsloc.scenes.operating_point: the
box to report, the namer's or the detector's, and the thresholds that meet `detect.target_precision`
and `detect.target_recall`, unless `detect.*` gives numbers), written to models/operating_point.json
where `tsloc detect` finds it beside the detector; score the test frames with COCO's evaluation
(tsloc.scenes.evaluation): AP at IoU 0.5 for finding signs whatever their class, mean AP over the
classes (finding and naming), COCO's AP at 0.5:0.95, AP per category (each AP over every detection,
ranked by its score, as COCO scores), precision and recall at the operating point and its errors by
kind, frames per second; the precision-recall curves and the validation sweep for `dvc plots`, a
gallery of the worst test frames and one of the test false positives.

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
from ..data.frames import BOX, NO_SIGN, FrameFiles, ahead, decode_frame, load_scene_table, subset_frames
from ..device import select_device
from ..errors import DataError
from ..io import write_csv, write_figure, write_json
from ..params import AUTO
from ..paths import (DETECTOR, MODEL, OPERATING_POINT, SCENE_CLASSES, SCENE_SPLIT, SCENES_DETECTIONS,
                     SCENES_FALSE_POSITIVES, SCENES_GALLERY, SCENES_METRICS, SCENES_PLOTS, SCENES_REPORT)
from ..scenes.evaluation import evaluate
from ..scenes.operating_point import FALSE_POSITIVES, PROBABILITIES, SCORES, Matcher, choose, choose_box, sweep
from ..serving.backend import load_backend, load_detector
from ..serving.find import Finder
from ..serving.namer import crop_windows, match_classes
from . import record_keys, tracked_params

GALLERY = 6           # test frames in the gallery, the worst first
FALSE_POSITIVE_CROPS = 15  # test false positives shown, the highest scores first


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    split = load_scene_table(SCENE_SPLIT)
    classes = pd.read_csv(SCENE_CLASSES, keep_default_na=False)
    device = select_device(p.detector.device)
    detector = load_detector(DETECTOR, device)
    namer = load_backend(MODEL, device)
    try:
        mapping = match_classes(classes, namer.meta["class_names"])
    except DataError as exc:  # e.g. a GTSRB crop model beside the synthetic scenes: finding is still scored
        print(f"tsloc scenes_evaluate: naming not scored: {exc}", file=sys.stderr)
        mapping = np.full(len(namer.meta["class_names"]), -1)
    scored = bool((mapping >= 0).any())  # naming is scored when the crop model knows the scene classes
    point = _choose(p.detect, split, Finder(detector, namer, vote_iou=p.detect.vote_iou), mapping, scored)
    test, paths = subset_frames(split, "test")
    rows, seconds = _find(Finder(detector, namer, box=point["box"], vote_iou=point["vote_iou"]), paths, mapping)
    category = dict(zip(classes["class_id"], classes["category"]))
    figures, curves, kept = score_scenes(test, rows, category, point["min_score"], point["min_probability"], scored)
    signs = test[test["class_id"] != NO_SIGN]
    report = {"test": {"frames": len(paths), "signs": int(len(signs)), **figures,
                       "frames_per_second": len(paths) / seconds if seconds else 0.0},
              "operating_point": point,
              "classes_with_test_signs": int(signs["class_id"].nunique()), "device": str(device), "namer": namer.name}
    write_json(SCENES_REPORT, report)
    t = report["test"]
    write_json(SCENES_METRICS, {"test": {k: t[k] for k in ("find_ap50", "find_ap", "map50", "map", "precision", "recall",
                                                           "frames_per_second")},
                                "operating_point": {k: point[k] for k in ("min_score", "min_probability")}})
    for key, (recall_steps, precision) in curves.items():
        write_csv(SCENES_PLOTS / f"pr_{key}.csv", pd.DataFrame({"recall": recall_steps, "precision": precision}),
                  float_format="%.4f")
    write_csv(SCENES_DETECTIONS, pd.DataFrame(rows), float_format="%.2f")
    names = classes["name"].tolist()
    _gallery(test, kept, names)
    _false_positives(kept, names)
    record_keys("scenes_evaluate", p)
    return report


def score_scenes(truth, rows, category: dict, min_score: float, min_probability: float,
                 scored: bool = True) -> tuple[dict, dict, list]:
    """The scene figures of `rows`, the finder's detections on the frames of `truth` (each with
    frame, detector_box, score, box, probability, scene_class_id; -1: a class the scenes lack):
    AP for finding (the detector's boxes and scores), mean AP over the classes and AP per category
    of `category` (scene class id -> name) for finding and naming (the crop model's box and class,
    ranked by score x probability). Every AP ranks every detection, as COCO does: a threshold
    before AP only drops true signs a weak namer is unsure of (GTSDB, docs/scenes.md). Recall and
    precision are at the operating point (`min_score`, `min_probability`: what `tsloc detect`
    keeps), of finding and of naming, with the errors there by kind (tsloc.scenes.operating_point).
    Returns the figures (naming's None unless `scored`), the two precision-recall curves, and the
    kept detections, each with its kind."""
    cat_ids = {c: i for i, c in enumerate(sorted(set(category.values())), 1)}
    found = [{"frame": r["frame"], "box": r["detector_box"], "score": r["score"]} for r in rows]
    named = [{"frame": r["frame"], "box": r["box"], "score": r["score"] * r["probability"],
              "class_id": r["scene_class_id"]} for r in rows]
    finding = evaluate(truth, found)                                                   # whatever the class
    naming = evaluate(truth, named, category=lambda c: c + 1 if c >= 0 else None)      # per class
    by_category = evaluate(truth, named, category=lambda c: cat_ids[category[c]] if c >= 0 else None)
    point = Matcher(truth, rows)
    kinds = point.kinds(min_score, min_probability)
    kept = [{**r, "kind": k} for r, k in zip(rows, kinds) if k]
    at = point.figures(min_score, min_probability, kinds)
    figures = {"find_ap50": finding["ap50"], "find_ap": finding["ap"],
               "map50": naming["ap50"] if scored else None, "map": naming["ap"] if scored else None,
               "ap50_category": {c: by_category["ap50_per_category"].get(i, 0.0) if scored else None
                                 for c, i in cat_ids.items()},
               "recall": at["recall"], "precision": at["precision"],
               "named_recall": at["named_recall"] if scored else None,
               "named_precision": at["named_precision"] if scored else None,
               "errors": {k: at[k] for k in ("missed", *(("wrong class",) if scored else ()), *FALSE_POSITIVES)}}
    return figures, {"find": finding["pr"], "named": naming["pr"]}, kept


def _find(finder, paths: list[str], mapping: np.ndarray) -> tuple[list[dict], float]:
    """Every detection of the frames `paths` (their class also as the scenes' id), and the seconds it took
    (decoding, a frame ahead in a thread, not counted)."""
    rows, seconds = [], 0.0
    for path, frame in ahead(zip(paths, FrameFiles(paths))):
        started = time.perf_counter()
        found = finder(frame)
        seconds += time.perf_counter() - started
        rows += [{"frame": path, **d, "scene_class_id": int(mapping[d["class_id"]])} for d in found]
    return rows, seconds


def _choose(d, split: pd.DataFrame, finder, mapping, scored: bool) -> dict:
    """The operating point, chosen on the validation frames (the box to report; each "auto" threshold
    swept, a number kept), written to models/operating_point.json with its validation figures; its
    sweep for `dvc plots`."""
    valid, paths = subset_frames(split, "valid")
    if not paths:
        raise DataError(f"{SCENE_SPLIT}: no validation frames to choose the operating point on (give detect.min_score "
                        "and detect.min_probability as numbers)")
    rows, _ = _find(finder, paths, mapping)
    box, box_ap = choose_box(valid, rows, scored)
    if box == "detector":
        rows = [{**r, "box": r["detector_box"]} for r in rows]
    table = sweep(Matcher(valid, rows), SCORES if d.min_score == AUTO else [d.min_score],
                  PROBABILITIES if d.min_probability == AUTO else [d.min_probability])
    best = choose(table, d.target_precision, d.target_recall)
    point = {"min_score": best["min_score"], "min_probability": best["min_probability"], "box": box,
             "vote_iou": d.vote_iou, "box_ap": box_ap,  # COCO AP 0.5:0.95 on validation, naming's where scored, with each box
             "chosen_on": {"subset": "valid", "frames": len(paths), "signs": int((valid["class_id"] != NO_SIGN).sum())},
             "targets": {"precision": d.target_precision, "recall": d.target_recall}, "met": best["met"],
             "valid": {k: best[k] for k in ("precision", "recall", "named_precision", "named_recall", "kept", "missed",
                                            "wrong class", *FALSE_POSITIVES)}}
    write_json(OPERATING_POINT, point)
    at = table[table["min_probability"] == best["min_probability"]]
    write_csv(SCENES_PLOTS / "operating_point.csv", at[["min_score", "precision", "recall"]], float_format="%.4f")
    return point


def _gallery(test, kept, names) -> None:
    """The test frames with the most errors at the operating point first (signs missed, false positives,
    wrong names): true boxes green, found red."""
    by_frame = {}
    for r in kept:
        by_frame.setdefault(r["frame"], []).append(r)
    errors = []
    for frame, part in test.groupby("frame"):
        found = by_frame.get(frame, [])
        hit = sum(r["kind"] in ("sign", "wrong class") for r in found)
        errors.append((int((part["class_id"] != NO_SIGN).sum()) - hit + sum(r["kind"] != "sign" for r in found), frame))
    items = []
    for frame in [f for _, f in sorted(errors, key=lambda e: (-e[0], e[1]))[:GALLERY]]:
        part = test[test["frame"] == frame]
        signs = part[part["class_id"] != NO_SIGN]
        found = by_frame.get(frame, [])
        boxes = [(tuple(b), "lime", "-") for b in signs[BOX].to_numpy()]
        boxes += [(tuple(r["box"]), "red", "--") for r in found]
        labels = [names[r["scene_class_id"]] if r["scene_class_id"] >= 0 else "?" for r in found]
        items.append({"image": decode_frame(frame), "boxes": boxes,
                      "title": f"{frame.split('/')[-1]}: {len(signs)} true, {len(labels)} found\n" + ", ".join(labels)[:60]})
    fig = plots.gallery(items, cols=2, legend={"true": ("lime", "-"), "found": ("red", "--")})
    write_figure(SCENES_GALLERY, fig)
    plt.close(fig)


def _false_positives(kept, names) -> None:
    """The test false positives at the operating point, the highest scores first, each cut out with its
    surroundings and titled with its kind: background or a sign the data set does not box is told
    apart here, by a look."""
    wrong = sorted((r for r in kept if r["kind"] in FALSE_POSITIVES), key=lambda r: -r["score"])[:FALSE_POSITIVE_CROPS]
    frames = {f: decode_frame(f) for f in dict.fromkeys(r["frame"] for r in wrong)}
    items = []
    for r in wrong:
        frame = frames[r["frame"]]
        left, top, right, bottom = r["box"]
        x0, y0, x1, y1 = crop_windows(np.array([r["box"]]), frame.shape[1], frame.shape[0], 1.0)[0]  # a box a side
        name = names[r["scene_class_id"]][:22] if r["scene_class_id"] >= 0 else "?"
        items.append({"image": frame[y0:y1, x0:x1], "boxes": [((left - x0, top - y0, right - x0, bottom - y0), "red", "--")],
                      "title": f"{r['kind']}: {name}\nscore {r['score']:.2f}, p {r['probability']:.2f}"})
    if not items:
        items = [{"image": np.full((8, 8, 3), 255, np.uint8), "boxes": [], "title": "no false positive"}]
    fig = plots.gallery(items, cols=5)
    write_figure(SCENES_FALSE_POSITIVES, fig)
    plt.close(fig)
