"""The operating point: the detector's score and the namer's probability a detection needs to be
reported (`tsloc detect`, the server, the inventory), chosen on the validation frames for the
precision and recall asked (`detect.target_precision`, `detect.target_recall`), not a constant;
and which box is reported, the namer's refined one or the detector's, the one with the higher
COCO AP (IoU 0.5:0.95) there.

What a reported detection is: matched one-to-one to a true sign as COCO matches (highest score
first, each to the free true box it overlaps most at IoU >= 0.5), a "sign" (named right) or a
"wrong class"; else a false positive of one of `FALSE_POSITIVES`: a "duplicate" (a true box
there is taken by a higher one), a "loose box" (IoU 0.1 to 0.5 with a true sign: found, badly
boxed) or "background" (no true sign there: background, or a sign of a class the data set does
not box, which only a look tells apart: the stage's gallery of them)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from ..data.frames import BOX, NO_SIGN
from .evaluation import LOOSE_IOU, MATCH_IOU, box_iou, evaluate

FALSE_POSITIVES = ("duplicate", "loose box", "background")
FOUND = ("sign", "wrong class")                       # matched to a true sign
SCORES = np.round(np.arange(0.05, 0.951, 0.05), 2)    # the detector's thresholds tried
PROBABILITIES = np.round(np.arange(0.0, 0.951, 0.05), 2)  # the namer's


class Matcher:
    """The detections `rows` (frame, box, score, probability, scene_class_id) of the frames of `truth`,
    each frame's overlaps with its true signs computed once, so that many thresholds are cheap."""

    def __init__(self, truth: pd.DataFrame, rows: list[dict]):
        signs = truth[truth["class_id"] != NO_SIGN]
        self.signs = len(signs)
        self.score = np.array([r["score"] for r in rows], dtype=float)
        self.probability = np.array([r["probability"] for r in rows], dtype=float)
        index = defaultdict(list)
        for i, r in enumerate(rows):
            index[r["frame"]].append(i)
        truth_of = {f: part for f, part in signs.groupby("frame")}
        self.frames = []  # (row indices by score, highest first; their IoU with the true boxes; named right)
        for frame, idx in index.items():
            idx = np.array(sorted(idx, key=lambda i: -self.score[i]))
            part = truth_of.get(frame, signs.iloc[:0])
            boxes = np.array([rows[i]["box"] for i in idx], dtype=float).reshape(-1, 4)
            iou = box_iou(boxes, part[BOX].to_numpy(float).reshape(-1, 4))
            right = np.array([rows[i]["scene_class_id"] for i in idx])[:, None] == part["class_id"].to_numpy()[None, :]
            self.frames.append((idx, iou, right))

    def kinds(self, min_score: float, min_probability: float) -> np.ndarray:
        """What each detection is at this operating point: one of FOUND or FALSE_POSITIVES, "" where not kept."""
        out = np.full(len(self.score), "", dtype=object)
        kept = (self.score >= min_score) & (self.probability >= min_probability)
        for idx, iou, right in self.frames:
            taken = np.zeros(iou.shape[1], dtype=bool)
            for k in np.flatnonzero(kept[idx]):
                overlap = iou[k]
                free = np.where(taken, -1.0, overlap)
                j = int(np.argmax(free)) if free.size else -1
                if j >= 0 and free[j] >= MATCH_IOU:
                    taken[j] = True
                    out[idx[k]] = "sign" if right[k, j] else "wrong class"
                elif overlap.size and overlap.max() >= MATCH_IOU:
                    out[idx[k]] = "duplicate"
                elif overlap.size and overlap.max() >= LOOSE_IOU:
                    out[idx[k]] = "loose box"
                else:
                    out[idx[k]] = "background"
        return out

    def figures(self, min_score: float, min_probability: float, kinds: np.ndarray | None = None) -> dict:
        """Precision and recall of finding (a true sign boxed, whatever its name) and of naming (boxed
        and named right), the detections kept and each kind's count (`kinds`: this point's, if at hand)."""
        kinds = self.kinds(min_score, min_probability) if kinds is None else kinds
        count = {k: int((kinds == k).sum()) for k in (*FOUND, *FALSE_POSITIVES)}
        kept, found = int((kinds != "").sum()), count["sign"] + count["wrong class"]
        share = lambda n, d: n / d if d else 0.0
        return {"min_score": float(min_score), "min_probability": float(min_probability), "kept": kept,
                "precision": share(found, kept), "recall": share(found, self.signs),
                "named_precision": share(count["sign"], kept), "named_recall": share(count["sign"], self.signs),
                "missed": self.signs - found, **count}


def sweep(matcher: Matcher, scores=SCORES, probabilities=PROBABILITIES) -> pd.DataFrame:
    """The figures at every pair of thresholds."""
    return pd.DataFrame([matcher.figures(s, p) for s in scores for p in probabilities])


def choose(table: pd.DataFrame, target_precision: float, target_recall: float) -> dict:
    """The row of `table` (a sweep) that meets both targets with the best F1 (of finding), else the
    best F1 of all (`met` false). Rows tied at the best F1 (common on few frames) give the middle one
    of the tied range, in (score, probability) order, not its edge."""
    f1 = 2 * table["precision"] * table["recall"] / (table["precision"] + table["recall"]).clip(lower=1e-12)
    met = (table["precision"] >= target_precision) & (table["recall"] >= target_recall)
    pool = table[met] if met.any() else table
    best = f1[pool.index]
    tied = pool[np.isclose(best, best.max())].sort_values(["min_score", "min_probability"])
    row = tied.iloc[[(len(tied) - 1) // 2]]
    return {**row.to_dict("records")[0], "f1": float(f1[row.index[0]]), "met": bool(met.any())}


def choose_box(truth: pd.DataFrame, rows: list[dict], scored: bool) -> tuple[str, dict]:
    """"namer" or "detector": the box of `rows` (the finder's, with the namer's box as "box") with the
    higher COCO AP over IoU 0.5:0.95 on `truth`'s frames, of naming where it is `scored`, else of
    finding; a tie keeps the namer's. With each one's AP."""
    ap = {}
    for name, key in (("namer", "box"), ("detector", "detector_box")):
        found = [{"frame": r["frame"], "box": r[key], "score": r["score"] * (r["probability"] if scored else 1.0),
                  "class_id": r["scene_class_id"]} for r in rows]
        ap[name] = evaluate(truth, found, category=(lambda c: c + 1 if c >= 0 else None) if scored else lambda c: 1)["ap"]
    return max(ap, key=ap.get), ap

