"""The detector's answer from its raw outputs, in NumPy: what torchvision's FCOS does after its head
(`FCOS.postprocess_detections`), for the ONNX file, whose graph ends at the head so that the
same file serves any frame size and needs no torch to read (tsloc.serving.backend).

Per pyramid level: scores over `score_thresh`, the best `topk` of them, boxes decoded from each
cell's centre (left, top, right, bottom distances in units of the level's stride) and clipped to
the frame; then greedy non-maximum suppression over all levels, the best `max_detections` kept;
and where asked (`vote_iou`), each kept box replaced by the score-weighted mean of the candidates that
overlap it at least that much (box voting: the scores stay, the boxes tighten).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

PAD = 32  # frames are padded to a multiple of this (the coarsest level's stride) before the backbone


@lru_cache(maxsize=16)
def cell_centres(height: int, width: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every level's cell centres (P, 2: x, y) in the padded frame's pixels, in the head's order (level,
    row, column), each cell's stride (P,) and how many cells each level has."""
    ph, pw = -(-height // PAD) * PAD, -(-width // PAD) * PAD
    centres, sizes, counts = [], [], []
    for s in strides:
        ys, xs = np.meshgrid(np.arange(ph // s) * s, np.arange(pw // s) * s, indexing="ij")
        centres.append(np.stack([xs.ravel(), ys.ravel()], 1))
        sizes.append(np.full(xs.size, s))
        counts.append(xs.size)
    return np.concatenate(centres).astype(np.float32), np.concatenate(sizes).astype(np.float32), counts


def overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of `boxes` (pixel edges); two empty boxes give NaN (0 / 0)."""
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision.ops.nms's rule): indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        order = rest[~(overlap(boxes[i], boxes[rest]) > iou)]  # NaN (two empty boxes): not suppressed, as torchvision
    return np.asarray(keep, dtype=np.int64)


def vote(kept: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Box voting: each kept box (K, 4) as the mean of the candidates `boxes` (N, 4) that overlap it at
    IoU >= `iou` (itself among them), weighted by their `scores`. On GTSDB it raises finding's COCO AP
    0.5:0.95 by about 0.03 and costs some recall at the operating point (docs/scenes.md: off by default)."""
    out = kept.astype(np.float32).copy()
    for k, box in enumerate(kept):
        weights = np.where(overlap(box, boxes) >= iou, scores, 0.0)
        if weights.sum() > 0:
            out[k] = weights @ boxes / weights.sum()
    return out


def decode(scores: np.ndarray, regression: np.ndarray, height: int, width: int, strides, *, score_thresh: float,
           topk: int, nms_thresh: float, max_detections: int, vote_iou: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4: left, top, right, bottom, pixels) and scores (N,) of a `height` x `width` frame from
    the head's scores (P,) and regression (P, 4); `vote_iou` > 0: the kept boxes voted (`vote`)."""
    centres, sizes, counts = cell_centres(height, width, tuple(strides))
    if len(scores) != len(centres):
        raise ValueError(f"the detector gave {len(scores)} cells for a {width} x {height} frame, not {len(centres)}")
    picked = []
    start = 0
    for n in counts:
        level = np.nonzero(scores[start:start + n] > score_thresh)[0] + start
        if len(level) > topk:
            level = level[np.argsort(-scores[level], kind="stable")[:topk]]
        picked.append(level)
        start += n
    idx = np.concatenate(picked)
    c, s, r = centres[idx], sizes[idx, None], regression[idx]
    boxes = np.concatenate([c - r[:, :2] * s, c + r[:, 2:] * s], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = nms(boxes, scores[idx], nms_thresh)[:max_detections]
    if vote_iou:
        return vote(boxes[keep], boxes, scores[idx], vote_iou), scores[idx][keep]
    return boxes[keep], scores[idx][keep]
