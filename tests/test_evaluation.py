"""The metric functions on cases computed by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tsloc.boxes import paired_iou
from tsloc.crops.evaluation import class_table, evaluate_subset, headline, shifted_metrics, shifted_views, subset_metrics

Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 3])   # class 3 is predicted but never true


def test_accuracy_balanced_accuracy_and_macro_f1_by_hand():
    iou = np.array([1.0, 0.8, 0.5, 0.74, 0.76, 0.0])
    const = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.2])
    m = subset_metrics(Y_TRUE, Y_PRED, iou, const)
    assert m["images"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall per true class: 2/3, 2/2, 0/1
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # F1 per class in truth or prediction: 0 (P 1, R 2/3) 0.8; 1 (P 2/3, R 1) 0.8; 2: 0; 3: 0
    assert m["macro_f1"] == pytest.approx((0.8 + 0.8 + 0 + 0) / 4)
    assert m["mean_iou"] == pytest.approx(3.8 / 6)
    assert m["iou_at_0.5"] == pytest.approx(5 / 6) and m["iou_at_0.75"] == pytest.approx(3 / 6)
    assert m["constant_box_iou"] == pytest.approx(2.7 / 6)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.2, 0.2]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0]])
    # overlap 0.0625 of union 0.4375; half of the whole image; disjoint
    assert paired_iou(a, b).tolist() == pytest.approx([1 / 7, 0.5, 0.0])


def _table(boxes, size=(100, 100)):
    w, h = size
    return pd.DataFrame({"path": [f"img{i}.png" for i in range(len(boxes))], "class_id": [0, 1][:len(boxes)],
                         "width": w, "height": h, **{k: [b[i] for b in boxes] for i, k in
                                                     enumerate(("left", "top", "right", "bottom"))}})


def test_evaluate_subset_scores_boxes_against_the_truth_and_the_constant_box():
    df = _table([(0, 0, 50, 50), (50, 50, 100, 100)])      # relative (0, 0, .5, .5) and (.5, .5, 1, 1)
    pred = {"probs": torch.tensor([[0.9, 0.1], [0.8, 0.2]]),
            "boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.75]])}
    metrics, rows = evaluate_subset(pred, df, torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert rows["iou"].tolist() == pytest.approx([1.0, 0.5])
    assert metrics["mean_iou"] == pytest.approx(0.75)
    assert metrics["constant_box_iou"] == pytest.approx(1 / 7)    # the constant box overlaps each by 1/7
    assert metrics["accuracy"] == 0.5 and rows["predicted"].tolist() == [0, 0]
    assert rows["probability"].tolist() == pytest.approx([0.9, 0.8])


def test_shifted_views_crop_a_window_around_the_box(tmp_path):
    """With no margin the window is the box itself: its relative box is the whole view and the view
    shows only the sign's colour. Boxes under 40 px are left out."""
    img = np.zeros((80, 100, 3), np.uint8)
    img[20:60, 30:70] = (255, 0, 0)                             # the sign: 40 x 40 px of red
    Image.fromarray(img).save(tmp_path / "big.png")
    Image.fromarray(img).save(tmp_path / "small.png")
    df = pd.DataFrame({"path": [str(tmp_path / "big.png"), str(tmp_path / "small.png")], "class_id": [0, 1],
                       "width": 100, "height": 80, "left": [30, 30], "top": [20, 20], "right": [70, 50],
                       "bottom": [60, 40]})
    views, boxes, keep = shifted_views(df, 32, max_margin=0.0)
    assert keep.tolist() == [0] and views.shape == (1, 32, 32, 3)
    assert boxes.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert (views[0, :, :, 0] == 255).all() and (views[0, :, :, 1:] == 0).all()
    views, boxes, keep = shifted_views(df, 32, max_margin=0.45)  # margins up to 45% of the box per side
    l, t, r, b = boxes[0].tolist()
    assert 0 <= l < r <= 1 and 0 <= t < b <= 1 and min(r - l, b - t) >= 1 / 1.9 - 1e-6
    again, boxes2, _ = shifted_views(df, 32, max_margin=0.45)
    assert (again == views).all() and torch.equal(boxes, boxes2)  # seeded


def test_shifted_metrics_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    pred = {"probs": torch.tensor([[0.9, 0.1], [0.9, 0.1]]), "boxes": boxes.clone()}
    m = shifted_metrics(pred, boxes, np.array([0, 1]), torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert m == {"images": 2, "accuracy": 0.5, "mean_iou": pytest.approx(1.0), "constant_box_iou": pytest.approx(1 / 7)}


def test_class_table_accuracy_is_recall_and_precision_counts_wrong_predictions():
    rows = pd.DataFrame({"actual": Y_TRUE, "predicted": Y_PRED})
    table = class_table(rows, np.array([0, 0, 1, 2, 3]), ["a", "b", "c", "d", "e"])
    assert list(table.columns) == ["class_id", "class_name", "train_share", "test_images", "correct", "accuracy",
                                   "precision"]
    assert table["accuracy"].tolist()[:3] == pytest.approx([2 / 3, 1.0, 0.0])
    assert table["precision"].tolist()[:4] == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    assert np.isnan(table["accuracy"][3]) and np.isnan(table["precision"][4])  # no test image / never predicted


def test_headline_is_the_few_figures_dvc_shows():
    full = {"valid": {"images": 9, "accuracy": 0.9, "mean_iou": 0.8, "macro_f1": 0.7},
            "test": {"images": 9, "accuracy": 0.9, "balanced_accuracy": 0.85, "macro_f1": 0.8, "mean_iou": 0.7,
                     "constant_box_iou": 0.6, "iou_at_0.5": 1.0},
            "test_shifted": {"images": 3, "accuracy": 1.0, "mean_iou": 0.5, "constant_box_iou": 0.4}, "best_epoch": 3}
    assert headline(full) == {"valid": {"accuracy": 0.9, "mean_iou": 0.8},
                              "test": {"accuracy": 0.9, "balanced_accuracy": 0.85, "macro_f1": 0.8, "mean_iou": 0.7,
                                       "constant_box_iou": 0.6},
                              "test_shifted": {"mean_iou": 0.5}}
    del full["test_shifted"]
    assert "test_shifted" not in headline(full)  # no sign large enough to shift
