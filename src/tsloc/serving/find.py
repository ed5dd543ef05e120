"""Finding and naming the signs of a frame: the detector's boxes, each named by the crop model
(tsloc.serving.namer). One function for the evaluate stage and `tsloc detect`. Imports no torch:
with ONNX files for both models, neither is loaded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .namer import margin_of, name


@dataclass
class Finder:
    """The detector (a `detector(frame) -> (boxes, scores)`: tsloc.serving.backend.load_detector) and the namer
    (a crop model backend: tsloc.serving.backend.load_backend)."""
    detector: object
    namer: object

    def __post_init__(self):
        self.margin = margin_of(self.namer.meta)

    def __call__(self, frame: np.ndarray, min_score: float = 0.0) -> list[dict]:
        """Every detection of `frame` (uint8 H x W x 3) scoring at least `min_score`: the detector's
        box and score, and the namer's class id (its own ids), probability and refined box, in pixels."""
        boxes, scores = self.detector(frame, min_score)
        keep = scores >= min_score  # also for a detector that leaves its threshold as it is
        boxes, scores = boxes[keep], scores[keep]
        probs, refined = name(self.namer, frame, boxes, self.margin)
        h, w = frame.shape[:2]
        refined = np.clip(refined, 0, [w, h, w, h])
        out = []
        for box, score, p, ref in zip(boxes, scores, probs, refined):
            c = int(np.argmax(p))
            valid = ref[2] > ref[0] and ref[3] > ref[1]
            out.append({"detector_box": [float(v) for v in box], "score": float(score), "class_id": c,
                        "probability": float(p[c]), "box": [float(v) for v in (ref if valid else box)]})
        return out
