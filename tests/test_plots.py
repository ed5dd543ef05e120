"""The figures: what is drawn, read back from Matplotlib's objects."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tsloc import plots


def test_history_has_one_axes_per_figure_and_sparse_validation_as_points():
    epochs = np.arange(1, 13)
    valid = lambda v: np.where(epochs % 6 == 0, v, np.nan)  # noqa: E731  validation every 6th epoch
    hist = pd.DataFrame({"epoch": epochs, "train/loss": 3.5 / epochs, "train/accuracy": 1 - 0.5 / epochs,
                         "train/mean_iou": 0.9 - 0.1 / epochs, "valid/loss": valid(2.5),
                         "valid/accuracy": valid(0.8), "valid/mean_iou": valid(0.85)})
    fig = plots.history(hist)
    axes = fig.get_axes()
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["Loss", "Accuracy", "Mean"]
    for ax, name in zip(axes, ("loss", "accuracy", "mean_iou")):
        train, val = ax.get_lines()
        assert list(train.get_ydata()) == list(hist[f"train/{name}"])
        assert list(val.get_xdata()) == [6, 12] and val.get_marker() == "o"   # points, not an empty line
        low, high = ax.get_ylim()
        assert low <= hist[f"train/{name}"].min() and high >= hist[f"train/{name}"].max()  # the whole range
    assert axes[0].get_ylim()[1] >= 3.5   # a loss above 2 is not cut off


def test_gallery_draws_boxes_and_a_legend():
    image = np.zeros((20, 30, 3), np.uint8)
    items = [{"image": image, "title": "1: Give way", "boxes": [((2, 3, 10, 12), "lime", "-"),
                                                               ((4, 4, 12, 14), "red", "--")]}]
    fig = plots.gallery(items, cols=2, legend={"true box": ("lime", "-"), "predicted box": ("red", "--")})
    ax = fig.get_axes()[0]
    assert ax.get_title() == "1: Give way" and len(ax.patches) == 2
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert texts == ["true box", "predicted box"]
