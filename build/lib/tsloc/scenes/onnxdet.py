"""The detector's ONNX file through ONNX Runtime (tsloc.scenes.export wrote it): the frame in, boxes
and scores out, decoded in NumPy (tsloc.scenes.decode). Imports neither torch nor torchvision."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..onnxrt import read_meta, session
from .decode import decode


class OnnxDetector:
    """`detector(frame)` -> (boxes (N, 4) in pixels, scores (N,)), as `TorchDetector` answers."""

    def __init__(self, path: str | Path, device="cpu"):
        self.session = session(path, device)
        self.meta = read_meta(path, self.session)
        if self.meta.get("kind") != "detector":
            raise ModelFileError(f"{path}: a tsloc crop model, not a detector (give it as --model; the detector is "
                                 "models/detector.onnx)")
        self.name = f"onnxruntime {self.meta['export']['precision']}"
        m = self.meta
        self.post = {"score_thresh": m["score_thresh"], "topk": m["topk"], "nms_thresh": m["nms_thresh"],
                     "max_detections": m["max_detections"]}

    def __call__(self, frame: np.ndarray, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Detections scoring at least `min_score` (and the file's own threshold): a higher one leaves
        fewer candidates for NMS, and the same detections over it (a box is only suppressed by a
        better one)."""
        h, w = frame.shape[:2]
        scores, distances = self.session.run(None, {"frame": np.ascontiguousarray(frame, dtype=np.uint8)})
        post = self.post | {"score_thresh": max(self.post["score_thresh"], min_score)}
        return decode(scores, distances, h, w, self.meta["strides"], **post)
