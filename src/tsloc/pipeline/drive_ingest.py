"""Stage `drive_ingest`: write the synthetic drive (tsloc.scenes.drive, `drive.*`) into data/drive/raw:
the video, its true tracks and the classes."""
from __future__ import annotations

import pandas as pd

from ..io import atomic_path
from ..paths import DRIVE_RAW, DRIVE_VIDEO
from ..scenes.drive import generate
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    d = p.drive
    with atomic_path(DRIVE_RAW, is_dir=True) as tmp:  # the folder whole or not at all
        _, tracks = generate(tmp, seconds=d.seconds, fps=d.fps, signs=d.signs, seed=d.seed, width=d.width,
                             height=d.height)
        truth = pd.read_csv(tracks)
    record_keys("drive_ingest", p)
    return {"video": str(DRIVE_VIDEO), "frames": int(round(d.seconds * d.fps)), "signs": int(truth["track_id"].nunique()),
            "boxes": len(truth)}
