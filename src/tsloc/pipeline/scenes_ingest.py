"""Stage `scenes_ingest`: read the scene data set named by `scenes.*` into data/scenes/boxes.csv and
data/scenes/classes.csv."""
from __future__ import annotations

from ..scenes.ingest import ingest
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    report = ingest(p.scenes)
    record_keys("scenes_ingest", p)
    return report
