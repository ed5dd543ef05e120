"""The pipeline's stages as functions: each reads its inputs and only the params it declares in dvc.yaml.

The scripts in stages/ and the `tsloc` command both call these, so a user and DVC run the same code.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from .data.ingest import ingest, load_metadata
from .data.split import SUBSETS, class_frequencies, make_split
from .io import write_csv, write_figure, write_json
from .params import Tracked, load_params, record_keys
from .plots import class_frequency

NUM_CLASSES = 62
SPLIT_TABLE = "data/split.csv"


def _params(params_file: str) -> Tracked:
    return Tracked(load_params(params_file))


def run_ingest(params_file: str = "params.yaml") -> dict:
    p = _params(params_file)
    metrics = ingest(p.data)
    record_keys("ingest", p)
    return metrics


def run_split(params_file: str = "params.yaml") -> dict:
    p = _params(params_file)
    meta = load_metadata()
    table, report = make_split(meta, p.split.strategy, p.split.valid_fraction, p.split.seed)
    freq = class_frequencies(table, NUM_CLASSES)
    for subset in SUBSETS:
        counts = freq[freq["subset"] == subset]
        write_csv(f"plots/split/class_frequency_{subset}.csv", counts[["class_id", "count"]])
        fig = class_frequency(counts, f"{subset}: {counts['count'].sum()} images")
        write_figure(f"plots/class_frequency_{subset}.png", fig)
        plt.close(fig)
    write_csv(SPLIT_TABLE, table)
    write_json("metrics/split.json", report)
    record_keys("split", p)
    return report
