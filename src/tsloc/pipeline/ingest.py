"""Stage `ingest`: read the data set named by `data.*` into data/metadata.csv and data/classes.csv."""
from __future__ import annotations

from ..data.ingest import ingest
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    metrics = ingest(p.data)
    record_keys("ingest", p)
    return metrics
