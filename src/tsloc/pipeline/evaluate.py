"""Stage `evaluate`: the model on valid, test and shifted test views; reports, metrics and the model card."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..evaluation import (class_table, class_table_markdown, evaluate_subset, headline, predict_images,
                          relative_boxes, shifted_metrics, shifted_views)
from ..io import atomic_path, write_csv, write_json
from ..model import load_model
from ..model_card import model_card
from ..params import record_keys
from ..training import select_device
from . import FEATURES, MODEL, PREDICTIONS, SPLIT_TABLE, load, subset_rows, tracked_params


def check_model_fits(ckpt: dict, store, split) -> None:
    """A model from another run (a stale or copied models/model.pt) against this image store and
    data: one clear message instead of a shape error or wrong class names."""
    size = store.shape[1]
    if ckpt["image_size"] != size:
        raise DataError(f"{MODEL}: the model takes {ckpt['image_size']}-px images but {FEATURES / 'images.npy'} "
                        f"holds {size}-px ones (data.image_size changed since training?): run dvc repro")
    top = int(split["class_id"].max())
    if top >= ckpt["num_classes"]:
        raise DataError(f"{MODEL}: the model knows {ckpt['num_classes']} classes but {SPLIT_TABLE} has class id "
                        f"{top} (trained on another data set?): run dvc repro")


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    split = load(SPLIT_TABLE, "split")
    store = load(FEATURES / "images.npy", "features")
    model, ckpt = load_model(MODEL)
    check_model_fits(ckpt, store, split)
    device = select_device(p.train.device)
    train = split[split["subset"] == "train"]
    constant_box = relative_boxes(train).mean(0, keepdim=True)
    report, rows = {}, {}
    for s in ("valid", "test"):
        idx = subset_rows(split, s)
        pred = predict_images(model, np.array(store[idx]), device)
        report[s], rows[s] = evaluate_subset(pred, split.iloc[idx], constant_box)
    test = split.iloc[subset_rows(split, "test")]
    images, boxes, keep = shifted_views(test, ckpt["image_size"])
    if len(keep):  # a data set of small images may have no sign large enough to shift
        report["test_shifted"] = shifted_metrics(predict_images(model, images, device), boxes,
                                                 test["class_id"].to_numpy()[keep], constant_box)
    report["loss_weight"] = ckpt["loss_weight"]
    report["best_epoch"] = ckpt["epoch"]
    report["constant_box"] = [round(v, 4) for v in constant_box[0].tolist()]
    table = class_table(rows["test"], train["class_id"].to_numpy(), ckpt["class_names"])
    write_csv("reports/class_accuracy.csv", table, float_format="%.4f")
    with atomic_path("reports/class_accuracy.md") as tmp:
        tmp.write_text(class_table_markdown(table))
    write_csv("plots/evaluate/confusion_test.csv", rows["test"][["actual", "predicted"]])
    write_csv("plots/evaluate/class_accuracy_test.csv",
              table.loc[table["test_images"] > 0, ["class_id", "accuracy"]], float_format="%.4f")
    write_csv(PREDICTIONS, rows["test"], float_format="%.5f")
    write_json("reports/evaluate.json", report)
    write_json("metrics/evaluate.json", headline(report))
    card = model_card(ckpt, json.loads(Path("reports/ingest.json").read_text()),
                      json.loads(Path("reports/split.json").read_text()), report, table)
    with atomic_path(MODEL.parent / "MODEL_CARD.md") as tmp:
        tmp.write_text(card)
    record_keys("evaluate", p)
    return report
