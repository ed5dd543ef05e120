"""Stage `visualize`: the training history and the galleries of training and test images."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plots
from ..data.images import open_rgb
from ..data.table import load_classes
from ..errors import DataError
from ..io import write_figure
from ..paths import LIVE, PLOTS, PREDICTIONS, SPLIT_TABLE
from . import load, record_keys, tracked_params


def _history() -> pd.DataFrame:
    """Per-epoch figures from DVCLive's files (dvclive/plots/metrics/<subset>/<name>.tsv)."""
    frames = []
    for tsv in sorted((LIVE / "plots" / "metrics").rglob("*.tsv")):
        key = tsv.relative_to(LIVE / "plots" / "metrics").with_suffix("").as_posix()
        df = pd.read_csv(tsv, sep="\t")
        frames.append(df.set_index("step")[df.columns[-1]].rename(key))
    if not frames:
        raise DataError(f"{LIVE}: no training history (run the train stage first: dvc repro train)")
    hist = pd.concat(frames, axis=1).reset_index()
    hist["epoch"] = hist["step"] + 1
    return hist


def _image(path: str) -> np.ndarray:
    return np.asarray(open_rgb(path))


TRUE_BOX, PREDICTED_BOX = ("lime", "-"), ("red", "--")


def _name(names: list[str], class_id: int, width: int = 22) -> str:
    """`id: name`, the name cut to fit a gallery title."""
    name = names[class_id]
    return f"{class_id}: {name if len(name) <= width else name[:width - 1] + '…'}"


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    rng = np.random.default_rng(p.visualize.seed)
    split = load(SPLIT_TABLE, "split")
    preds = load(PREDICTIONS, "evaluate")
    names = load_classes()
    fig = plots.history(_history())
    write_figure(PLOTS / "history.png", fig)
    plt.close(fig)

    train = split[split["subset"] == "train"]
    items = []
    for r in train.iloc[rng.choice(len(train), size=min(10, len(train)), replace=False)].itertuples():
        items.append({"image": _image(r.path), "title": _name(names, r.class_id),
                      "boxes": [((r.left, r.top, r.right, r.bottom), *TRUE_BOX)]})
    fig = plots.gallery(items, legend={"true box": TRUE_BOX})
    write_figure(PLOTS / "train_gallery.png", fig)
    plt.close(fig)

    test = split[split["subset"] == "test"].set_index("path")
    right = np.flatnonzero(preds["actual"] == preds["predicted"])
    wrong = np.flatnonzero(preds["actual"] != preds["predicted"])
    chosen = [*rng.choice(right, size=min(5, len(right)), replace=False),
              *rng.choice(wrong, size=min(5, len(wrong)), replace=False)]
    items = []
    for i in chosen:
        r = preds.iloc[i]
        t = test.loc[r.path]
        w, h = t.width, t.height
        pred_box = (r.pred_left * w, r.pred_top * h, r.pred_right * w, r.pred_bottom * h)
        items.append({"image": _image(r.path),
                      "title": f"True: {_name(names, r.actual)}\n"
                               f"Predicted: {_name(names, r.predicted)} ({100 * r.probability:.1f}%)",
                      "title_color": "green" if r.actual == r.predicted else "red",
                      "boxes": [((t.left, t.top, t.right, t.bottom), *TRUE_BOX), (pred_box, *PREDICTED_BOX)]})
    fig = plots.gallery(items, legend={"true box": TRUE_BOX, "predicted box": PREDICTED_BOX})
    write_figure(PLOTS / "predictions.png", fig)
    plt.close(fig)
    record_keys("visualize", p)
    return {"right_shown": int(min(5, len(right))), "wrong_shown": int(min(5, len(wrong)))}
