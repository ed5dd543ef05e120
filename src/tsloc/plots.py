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


def history(hist: pd.DataFrame):
    """The notebook's history figure: accuracy and loss per epoch, train solid, valid dashed."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for subset, ls in (("train", "-"), ("valid", "--"), ("test", ":")):
        if f"{subset}/accuracy" in hist:
            ax.plot(hist["epoch"], hist[f"{subset}/accuracy"], ls=ls, label=f"{subset.title()} accuracy")
            ax.plot(hist["epoch"], hist[f"{subset}/loss"], ls=ls, label=f"{subset.title()} loss")
    ax.set_xlabel("Epoch")
    ax.grid(True)
    ax.set_ylim(-0.05, max(2.05, 1.05))
    ax.legend()
    fig.tight_layout()
    return fig


def _box_patch(box, color, ls):
    left, top, right, bottom = box
    return plt.Rectangle((left, top), right - left, bottom - top, fill=False, color=color, ls=ls, lw=2)


def gallery(items: list[dict], cols: int = 5):
    """Images as they are, with boxes in their pixels: each item has `image`, `boxes` [(box, colour,
    linestyle)], `title` and optionally `title_color`."""
    rows = max(1, (len(items) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(item["image"])
        for box, color, ls in item["boxes"]:
            ax.add_patch(_box_patch(box, color, ls))
        ax.set_title(item["title"], color=item.get("title_color", "black"), fontsize=9)
    fig.tight_layout()
    return fig
