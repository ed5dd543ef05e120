"""The scene table that every frame reader produces and everything after scenes ingest reads.

One row per box, and one row for each frame without any sign (its class_id -1, no box): `frame`
(the file), `side` (Training or Testing: the data set's own test side, if it has one), `width` and
`height` of the upright frame, `class_id` (an index into the scene classes), the box `left, top,
right, bottom` in pixel edges of the upright frame (right and bottom exclusive, as the crop
table's), and `line` (the annotation line behind the row). The classes: `class_id, name,
category` (GTSDB's categories: prohibitory, danger, mandatory, other).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .images import open_rgb
from .table import map_threads

COLUMNS = ["frame", "side", "width", "height", "class_id", "left", "top", "right", "bottom", "line"]
BOX = ["left", "top", "right", "bottom"]
CATEGORIES = ("prohibitory", "danger", "mandatory", "other")
NO_SIGN = -1  # the class_id of a frame's row when the frame has no sign
AHEAD = 2     # frames decoded ahead of the one in use (`ahead`)


@dataclass
class SceneSet:
    """What a frame reader returns: the scene table, the classes (class_id, name, category), a
    summary per side and a fingerprint (tsloc.data.table.files_digest) per side."""
    table: pd.DataFrame
    classes: pd.DataFrame
    summary: dict
    fingerprint: dict
    format: str = ""


def classes_table(names: list[str], categories: list[str]) -> pd.DataFrame:
    bad = [c for c in categories if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown categories {sorted(set(bad))}; known: {CATEGORIES}")
    return pd.DataFrame({"class_id": range(len(names)), "name": names, "category": categories})


def side_summary(table: pd.DataFrame, side: str) -> dict:
    """Frames, frames with and without signs, boxes, classes and box sides of one side."""
    part = table[table["side"] == side]
    boxes = part[part["class_id"] != NO_SIGN]
    frames = part["frame"].nunique()
    with_signs = boxes["frame"].nunique()
    sides = np.minimum(boxes["right"] - boxes["left"], boxes["bottom"] - boxes["top"])
    return {"frames": int(frames), "with_signs": int(with_signs), "without_signs": int(frames - with_signs),
            "boxes": int(len(boxes)), "classes": int(boxes["class_id"].nunique()),
            "box_side_px": [float(sides.min()), float(sides.max())] if len(boxes) else None}


def check_frame_box(where: str, box, width: int, height: int) -> None:
    """A box must lie inside its frame and have an area."""
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise DataError(f"{where}: box (left {left}, top {top}, right {right}, bottom {bottom}) is not inside its "
                        f"{width}x{height} frame")


def load_scene_table(path) -> pd.DataFrame:
    if not Path(path).exists():
        raise DataError(f"{path}: not found (run the scenes_ingest stage first: dvc repro scenes_ingest)")
    return pd.read_csv(path)


def subset_frames(split: pd.DataFrame, subset: str) -> tuple[pd.DataFrame, list[str]]:
    """One subset's rows (a frame's boxes, or its one row without a sign) and its frames' paths,
    each once, in the table's order."""
    part = split[split["subset"] == subset]
    return part, list(dict.fromkeys(part["frame"]))


def boxes_and_sizes(part: pd.DataFrame, paths: list[str]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Each frame's boxes (N, 4) in pixels (none for a frame without a sign) and its (width, height)."""
    signs = part[part["class_id"] != NO_SIGN]
    boxes = [signs.loc[signs["frame"] == p, BOX].to_numpy(np.float32) for p in paths]
    first = part.drop_duplicates("frame").set_index("frame")
    return boxes, [(int(first.at[p, "width"]), int(first.at[p, "height"])) for p in paths]


def decode_frame(path) -> np.ndarray:
    """A frame as upright RGB uint8 (H, W, 3), writable (torch takes it as it is)."""
    return np.array(open_rgb(path))


def decode_frames(paths: list[str]) -> list[np.ndarray]:
    """Every frame decoded once, in threads, and held (a 1360 x 800 frame is 3.3 MB decoded)."""
    return map_threads(decode_frame, paths, desc="decode frames")


def ahead(items, count: int = AHEAD):
    """The items of an iterator, produced in one worker thread up to `count` ahead of the one in use (the
    next frames decoded while this one is searched: image files, a video's, FrameFiles'); an error is
    raised here, in its place. Memory holds `count` + 1 items."""
    items, end = iter(items), object()
    with ThreadPoolExecutor(1) as pool:
        pending = deque(pool.submit(next, items, end) for _ in range(count + 1))
        while (item := pending.popleft().result()) is not end:
            pending.append(pool.submit(next, items, end))
            yield item


class FrameFiles(Sequence):
    """Frames decoded when indexed, none held: memory stays a frame's whatever the count (GTSDB's 600
    frames are 2 GB decoded). A frame's decoding (a few ms) is small beside a training step.
    `decode`: decode_frame (a uint8 array), or open_rgb (the PIL image, for training windows, which
    resample from it without an array in between)."""

    def __init__(self, paths, decode=decode_frame):
        self.paths, self.decode = list(paths), decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.decode(self.paths[i])
