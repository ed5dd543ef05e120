"""Stage `scenes_split`: train / valid / test by frame (`scenes.valid_fraction`, `scenes.test_fraction`,
`scenes.seed`)."""
from __future__ import annotations

from ..data.frames import load_scene_table
from ..io import write_csv, write_json
from ..paths import SCENE_SPLIT, SCENE_TABLE, SCENES_SPLIT_REPORT
from ..scenes.split import split_frames
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    s = p.scenes
    table, report = split_frames(load_scene_table(SCENE_TABLE), s.valid_fraction, s.test_fraction, s.seed)
    write_csv(SCENE_SPLIT, table)
    write_json(SCENES_SPLIT_REPORT, report)
    record_keys("scenes_split", p)
    return report
