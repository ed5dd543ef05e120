"""The crop model as the scene branch's namer: each detection is cut out of its frame with the
margin the crop model was trained with, squashed to its input and named; the crop model's box,
relative to the crop, refines the detector's. The scene classes are matched to the crop model's by
id where they share them (same id, same name: GTSDB and GTSRB), else by name."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from ..data.images import to_input
from ..errors import DataError

DEFAULT_MARGIN = 0.1  # a model file that does not say its crops' margin: GTSRB's border


def match_classes(scene: pd.DataFrame, crop_names: list[str]) -> np.ndarray:
    """For each crop class id, the scene class id it is (-1: none). By id where every scene class
    has its name at its id in the crop model, else by name; scene classes the crop model does not
    know are one message naming them."""
    names = scene["name"].tolist()
    if all(i < len(crop_names) and crop_names[i] == n for i, n in enumerate(names)):
        mapping = np.full(len(crop_names), -1)
        mapping[:len(names)] = np.arange(len(names))
        return mapping
    lookup = {n: i for i, n in enumerate(crop_names)}
    unknown = [f"{i} {n!r}" for i, n in enumerate(names) if n not in lookup]
    if unknown:
        raise DataError(f"the crop model does not know {len(unknown)} of the scene classes ({', '.join(unknown[:5])}"
                        f"{', ...' if len(unknown) > 5 else ''}): train it on the same signs (data.* of the same "
                        "family, e.g. GTSRB for GTSDB scenes)")
    mapping = np.full(len(crop_names), -1)
    for i, n in enumerate(names):
        mapping[lookup[n]] = i
    return mapping


def margin_of(meta: dict) -> float:
    return float(meta.get("crop_margin", DEFAULT_MARGIN))


def crop_windows(boxes: np.ndarray, width: int, height: int, margin: float) -> np.ndarray:
    """Each box grown by `margin` of its size per side, clipped to the frame, in whole pixels (N, 4)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mx, my = margin * (b[:, 2] - b[:, 0]), margin * (b[:, 3] - b[:, 1])
    out = np.stack([np.floor(b[:, 0] - mx), np.floor(b[:, 1] - my), np.ceil(b[:, 2] + mx), np.ceil(b[:, 3] + my)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out.astype(np.int64)


def name(backend, frame: np.ndarray, boxes: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The crop model on each box of `frame` (uint8 H x W x 3): class probabilities (N, C) and its
    boxes in frame pixels (N, 4)."""
    if not len(boxes):
        return np.zeros((0, len(backend.meta["class_names"])), np.float32), np.zeros((0, 4))
    size = backend.meta["image_size"]
    h, w = frame.shape[:2]
    windows = crop_windows(boxes, w, h, margin)
    image = Image.fromarray(frame)
    pixels = np.stack([to_input(image.crop(tuple(int(v) for v in win)), size) for win in windows])
    probs, rel = backend(pixels)
    cw, ch = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    refined = np.stack([windows[:, 0] + rel[:, 0] * cw, windows[:, 1] + rel[:, 1] * ch,
                        windows[:, 0] + rel[:, 2] * cw, windows[:, 1] + rel[:, 3] * ch], 1)
    return probs, refined
