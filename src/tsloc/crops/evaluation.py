"""Metrics of a trained model on a subset: accuracy, balanced accuracy, macro F1, box IoU, and the
constant-box baseline (the mean training box) that a localiser has to beat."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support
from tqdm import tqdm

from ..boxes import paired_iou, relative_boxes
from ..data.images import open_rgb, to_input


def predict_images(backend, images: np.ndarray, batch_size: int = 64) -> dict:
    """Class probabilities and valid relative boxes for uint8 images (N, S, S, 3), from any backend
    (tsloc.serving.backend.load_backend: the `.pt` model or an ONNX export)."""
    probs, boxes = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch", leave=False):
        p, b = backend(np.asarray(images[start:start + batch_size]))
        probs.append(torch.from_numpy(p))
        boxes.append(torch.from_numpy(b))
    n = len(backend.meta["class_names"])
    return {"probs": torch.cat(probs) if probs else torch.empty(0, n), "boxes": torch.cat(boxes) if boxes else torch.empty(0, 4)}


def agreement(pred: dict, reference: dict) -> dict:
    """How far one backend's answers are from another's on the same images (an export against the
    PyTorch model): the share of images given the same class, and the largest differences in
    probability and in box coordinates (as shares of the image's width and height)."""
    return {"images": int(len(pred["probs"])),
            "same_class": float((pred["probs"].argmax(1) == reference["probs"].argmax(1)).float().mean()),
            "max_probability_difference": float((pred["probs"] - reference["probs"]).abs().max()),
            "max_box_difference": float((pred["boxes"] - reference["boxes"]).abs().max())}


def constant_box(split: pd.DataFrame) -> torch.Tensor:
    """The mean training box (1, 4): the baseline a localiser has to beat."""
    return relative_boxes(split[split["subset"] == "train"]).mean(0, keepdim=True)


def subset_metrics(y_true: np.ndarray, y_pred: np.ndarray, iou: np.ndarray, const_iou: np.ndarray) -> dict:
    with warnings.catch_warnings():  # predictions of classes absent from a small subset are expected
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "images": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": balanced,
        # scikit-learn's macro F1: the unweighted mean over every class in the truth or the predictions
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mean_iou": float(iou.mean()),
        "iou_at_0.5": float((iou >= 0.5).mean()),
        "iou_at_0.75": float((iou >= 0.75).mean()),
        "constant_box_iou": float(const_iou.mean()),
    }


HEADLINE = {"valid": ("accuracy", "mean_iou"),
            "test": ("accuracy", "balanced_accuracy", "macro_f1", "mean_iou", "constant_box_iou"),
            "test_shifted": ("mean_iou",)}


def headline(report: dict) -> dict:
    """The figures DVC shows as metrics (metrics/evaluate.json): few enough for `dvc exp show`;
    the full report stays in reports/evaluate.json and the model card."""
    return {subset: {k: report[subset][k] for k in keys} for subset, keys in HEADLINE.items() if subset in report}


def evaluate_subset(pred: dict, df: pd.DataFrame, constant_box: torch.Tensor) -> tuple[dict, pd.DataFrame]:
    """Metrics and one row per image (true/predicted class, probability, IoU, predicted box)."""
    truth = relative_boxes(df)
    iou = paired_iou(pred["boxes"], truth).numpy()
    const_iou = paired_iou(constant_box.expand_as(truth), truth).numpy()
    prob, y_pred = pred["probs"].max(1)
    y_true = df["class_id"].to_numpy()
    rows = pd.DataFrame({
        "path": df["path"].to_numpy(), "actual": y_true, "predicted": y_pred.numpy(),
        "probability": prob.numpy(), "iou": iou,
        **{f"pred_{k}": pred["boxes"][:, i].numpy() for i, k in enumerate(("left", "top", "right", "bottom"))},
    })
    return subset_metrics(y_true, y_pred.numpy(), iou, const_iou), rows


def class_table(rows: pd.DataFrame, train_labels: np.ndarray, names: list[str]) -> pd.DataFrame:
    """The notebook's per-class table plus precision (NaN where a class has no test image). A class's
    accuracy is its recall, so there is no separate recall column."""
    n = len(names)
    freq = np.bincount(train_labels, minlength=n)
    total = np.bincount(rows["actual"], minlength=n)
    correct = np.bincount(rows.loc[rows.actual == rows.predicted, "actual"], minlength=n)
    precision, _, _, _ = precision_recall_fscore_support(rows["actual"], rows["predicted"],
                                                         labels=list(range(n)), zero_division=0)
    has = total > 0
    return pd.DataFrame({
        "class_id": range(n), "class_name": names,
        "train_share": freq / max(freq.sum(), 1), "test_images": total, "correct": correct,
        "accuracy": np.where(has, correct / np.maximum(total, 1), np.nan),
        "precision": np.where(has | (np.bincount(rows["predicted"], minlength=n) > 0), precision, np.nan),
    })


def class_table_markdown(table: pd.DataFrame) -> str:
    pct = lambda v: "N/A" if pd.isna(v) else f"{100 * v:.2f}%"  # noqa: E731
    lines = ["| class | name | share of training data | test images | correct | accuracy (recall) | precision |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in table.itertuples():
        lines.append(f"| {r.class_id} | {r.class_name} | {100 * r.train_share:.2f}% | {r.test_images} | "
                     f"{r.correct} | {pct(r.accuracy)} | {pct(r.precision)} |")
    return "\n".join(lines) + "\n"


def shifted_views(df: pd.DataFrame, size: int, *, seed: int = 0, min_box: int = 40,
                  max_margin: float = 0.45) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Re-crop every image whose box is at least `min_box` px wide and tall to a window that holds
    the whole box, each side's margin drawn independently from U(0, max_margin) x the box's width
    or height (fixed seed), edge pixels replicated where the window leaves the image. The window is
    squashed to `size` like any input. Returns the images, their relative boxes, and the rows used.

    A constant box cannot follow the sign here; a real localiser can."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(((df["right"] - df["left"]) >= min_box) & ((df["bottom"] - df["top"]) >= min_box))
    images = np.empty((len(keep), size, size, 3), dtype=np.uint8)
    boxes = np.empty((len(keep), 4), dtype=np.float64)
    for k, i in enumerate(tqdm(keep, desc="shifted test views", unit="img", leave=False)):
        r = df.iloc[i]
        bw, bh = r.right - r.left, r.bottom - r.top
        m = rng.uniform(0, max_margin, 4) * np.array([bw, bh, bw, bh])
        x0, y0 = int(np.floor(r.left - m[0])), int(np.floor(r.top - m[1]))
        x1, y1 = int(np.ceil(r.right + m[2])), int(np.ceil(r.bottom + m[3]))
        a = np.asarray(open_rgb(r.path))
        h, w = a.shape[:2]
        pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
        a = np.pad(a, pad, mode="edge")[y0 + pad[0][0]:y1 + pad[0][0], x0 + pad[1][0]:x1 + pad[1][0]]
        images[k] = to_input(Image.fromarray(a), size)
        boxes[k] = [(r.left - x0) / (x1 - x0), (r.top - y0) / (y1 - y0),
                    (r.right - x0) / (x1 - x0), (r.bottom - y0) / (y1 - y0)]
    return images, torch.tensor(boxes, dtype=torch.float32), keep


def shifted_metrics(pred: dict, boxes: torch.Tensor, labels: np.ndarray, constant_box: torch.Tensor) -> dict:
    iou = paired_iou(pred["boxes"], boxes).numpy()
    const = paired_iou(constant_box.expand_as(boxes), boxes).numpy()
    return {"images": int(len(boxes)), "accuracy": float((pred["probs"].argmax(1).numpy() == labels).mean()),
            "mean_iou": float(iou.mean()), "constant_box_iou": float(const.mean())}
