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


HISTORY = (("loss", "Loss (cross-entropy + box loss / fixed weight)"), ("accuracy", "Accuracy"),
           ("mean_iou", "Mean IoU"))


def history(hist: pd.DataFrame):
    """Loss, accuracy and mean IoU per epoch, each on its own axes with its whole range. Training is a
    line; validation (and test) passes, which may run only every N epochs, are points joined by a
    dashed line, so a pass every 6th epoch still shows."""
    fig, axes = plt.subplots(1, len(HISTORY), figsize=(15, 4.2))
    for ax, (name, title) in zip(axes, HISTORY):
        for subset, style in (("train", {"ls": "-"}), ("valid", {"ls": "--", "marker": "o"}),
                              ("test", {"ls": ":", "marker": "s"})):
            key = f"{subset}/{name}"
            if key in hist:
                seen = hist[["epoch", key]].dropna()
                ax.plot(seen["epoch"], seen[key], label=subset.title(), markersize=4, **style)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("Epoch")
        ax.grid(True)
        ax.margins(y=0.08)
        ax.legend()
    fig.tight_layout()
    return fig


def _box_patch(box, color, ls):
    left, top, right, bottom = box
    return plt.Rectangle((left, top), right - left, bottom - top, fill=False, color=color, ls=ls, lw=2)


def gallery(items: list[dict], cols: int = 5, legend: dict | None = None):
    """Images as they are, with boxes in their pixels: each item has `image`, `boxes` [(box, colour,
    linestyle)], `title` and optionally `title_color`; `legend` maps a label to a box's (colour,
    linestyle) for a key under the images."""
    rows = max(1, (len(items) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(item["image"])
        for box, color, ls in item["boxes"]:
            ax.add_patch(_box_patch(box, color, ls))
        ax.set_title(item["title"], color=item.get("title_color", "black"), fontsize=9)
    if legend:
        handles = [plt.Line2D([], [], color=color, ls=ls, lw=2, label=label) for label, (color, ls) in legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return fig
