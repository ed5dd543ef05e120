"""Finding and naming the signs of a frame: the detector's boxes, each named by the crop model
(tsloc.serving.namer). One function for the evaluate stage and `tsloc detect`. Imports no torch:
with ONNX files for both models, neither is loaded."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..params import AUTO
from .namer import margin_of, name

POINT_FILE = "operating_point.json"  # beside the pipeline's detector (models/): scenes_evaluate chose it
FALLBACK = {"min_score": 0.3, "min_probability": 0.5}  # for a detector no validation chose a point for


def operating_point(detector, detector_file, min_score: float | str = AUTO,
                    min_probability: float | str = AUTO) -> dict:
    """The thresholds a reported detection needs: each a number given (a flag, params.yaml) or "auto":
    the point chosen on validation frames for this detector (tsloc.scenes.operating_point), from its
    file's metadata (a ready pair) or operating_point.json beside it (the pipeline's), else FALLBACK;
    with the box to report (`box`, chosen there too; else the namer's), the box voting's IoU
    (`vote_iou`, 0: none) and where "auto" came from (`chosen`)."""
    path = Path(detector_file).with_name(POINT_FILE)
    chosen, source = getattr(detector, "meta", {}).get("operating_point"), f"{detector_file}'s metadata"
    if chosen is None and path.is_file():
        try:
            chosen, source = json.loads(path.read_text()), str(path)
            float(chosen["min_score"]), float(chosen["min_probability"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: not an operating point (min_score, min_probability): {exc}") from None
    if chosen is None:
        chosen, source = FALLBACK, "the fallback (no point chosen for this detector)"
    return {"min_score": float(chosen["min_score"] if min_score == AUTO else min_score),
            "min_probability": float(chosen["min_probability"] if min_probability == AUTO else min_probability),
            "box": chosen.get("box", "namer"), "vote_iou": float(chosen.get("vote_iou", 0.0)),
            "chosen": source if AUTO in (min_score, min_probability) else "given"}


@dataclass
class Finder:
    """The detector (`detector(frame, min_score, vote_iou) -> (boxes, scores)`:
    tsloc.serving.backend.load_detector) and the namer (a crop model backend: load_backend)."""
    detector: object
    namer: object
    box: str = "namer"  # the box reported: the namer's refined one, or the detector's (chosen on validation)
    vote_iou: float = 0.0  # the detector's boxes voted by its candidates over this IoU (0: not)

    def __post_init__(self):
        self.margin = margin_of(self.namer.meta)

    def __call__(self, frame: np.ndarray, min_score: float = 0.0) -> list[dict]:
        """Every detection of `frame` (uint8 H x W x 3) scoring at least `min_score`: the detector's
        box and score, the namer's class id (its own ids) and probability, and the box reported (`box`:
        the namer's refined box, or the detector's), in pixels."""
        boxes, scores = self.detector(frame, min_score, self.vote_iou)
        keep = scores >= min_score  # also for a detector that leaves its threshold as it is
        boxes, scores = boxes[keep], scores[keep]
        probs, refined = name(self.namer, frame, boxes, self.margin)
        h, w = frame.shape[:2]
        refined = np.clip(refined, 0, [w, h, w, h])
        out = []
        for box, score, p, ref in zip(boxes, scores, probs, refined):
            c = int(np.argmax(p))
            valid = self.box == "namer" and ref[2] > ref[0] and ref[3] > ref[1]
            out.append({"detector_box": [float(v) for v in box], "score": float(score), "class_id": c,
                        "probability": float(p[c]), "box": [float(v) for v in (ref if valid else box)]})
        return out
