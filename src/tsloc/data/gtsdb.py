"""GTSDB's frames as a crop data set (`data.format: gtsdb`): each sign cut out of its frame with a
margin of `data.crop_margin` of its size per side (GTSRB's own crops carry about 10%, the
default here when `data.crop_margin` is 0), so that a user with annotated frames only trains the
namer from them too. The frames are read by the scene branch's reader (tsloc.scenes.gtsdb); the
crops of one frame form one group (they may overlap)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..scenes import gtsdb as frames
from ..scenes.table import BOX, NO_SIGN
from .manifest import crop_boxes
from .table import COLUMNS as METADATA_COLUMNS, SIDES, Dataset, map_threads, summary

GTSRB_MARGIN = 0.1  # GTSRB's crops: a border of about 10% of the sign on each side


def locate(path: Path) -> Path | None:
    return frames.locate(path)


def read(path: Path, crop_margin: float = 0.0, crops: Path | None = None) -> Dataset:
    scene = frames.read(path)
    boxes = scene.table[scene.table["class_id"] != NO_SIGN]
    if crops is None:
        raise ValueError("GTSDB crops need a folder to be written to")
    crops.mkdir(parents=True, exist_ok=True)
    margin = crop_margin or GTSRB_MARGIN
    jobs = [(i, Path(frame), rows) for i, (frame, rows) in enumerate(boxes.groupby("frame", sort=True))]
    cut = map_threads(lambda job: crop_boxes(job[1], list(job[2][BOX].itertuples(index=False, name=None)), margin,
                                             crops, f"{job[0]:06d}"), jobs, desc="crop GTSDB signs")
    records = []
    for (_, frame, rows), results in zip(jobs, cut):
        for r, (file, w, h, box) in zip(rows.itertuples(index=False), results):
            records.append((r.side, int(r.class_id), file.name, str(file), w, h, *box, f"frame:{frame.name}",
                            str(r.line)))
    table = pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)
    report = {s: summary(table, s, frames=scene.summary[s]["frames"]) for s in SIDES}
    return Dataset(table, scene.classes["name"].tolist(), report, scene.fingerprint)
