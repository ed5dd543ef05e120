"""Stage `split`: train / valid / test by `split.*`, with the class frequencies of each."""
from __future__ import annotations

import matplotlib.pyplot as plt

from .. import plots
from ..data.split import SUBSETS, class_frequencies, make_split
from ..data.table import load_classes, load_metadata
from ..io import write_csv, write_figure, write_json
from ..paths import PLOTS, SPLIT_PLOTS, SPLIT_REPORT, SPLIT_TABLE
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    meta = load_metadata()
    table, report = make_split(meta, p.split.strategy, p.split.valid_fraction, p.split.seed, p.split.folds,
                               p.split.fold, p.split.test_fraction)
    freq = class_frequencies(table, len(load_classes()))
    for subset in SUBSETS:
        counts = freq[freq["subset"] == subset]
        write_csv(SPLIT_PLOTS / f"class_frequency_{subset}.csv", counts[["class_id", "count"]])
        fig = plots.class_frequency(counts, f"{subset}: {counts['count'].sum()} images")
        write_figure(PLOTS / f"class_frequency_{subset}.png", fig)
        plt.close(fig)
    write_csv(SPLIT_TABLE, table)
    write_json(SPLIT_REPORT, report)
    record_keys("split", p)
    return report
