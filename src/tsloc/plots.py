"""Matplotlib figures (PNG under plots/). The data behind them is written beside them for `dvc plots`."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen: files only
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def class_frequency(counts: pd.DataFrame, title: str):
    """The notebook's bar chart: images per class id, the count written over each bar."""
    fig, ax = plt.subplots(figsize=(15, 4))
    ax.bar(counts["class_id"], counts["count"])
    top = max(1, counts["count"].max())
    for x, y in zip(counts["class_id"], counts["count"]):
        ax.text(x, y + top * 0.01, str(y), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("Class ID")
    ax.set_ylabel("Class frequency")
    ax.set_title(title)
    ax.set_xlim(-1, len(counts))
    ax.set_ylim(0, top * 1.12)
    fig.tight_layout()
    return fig
