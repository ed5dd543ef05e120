"""Stage `evaluate`: the model on valid, test and shifted test views; reports, metrics and the model card."""
from __future__ import annotations

import json
from pathlib import Path

from ..evaluation import (class_table, class_table_markdown, evaluate_subset, headline, predict_images,
                          constant_box, shifted_metrics, shifted_views)
from ..io import atomic_path, write_csv, write_json
from ..inference import load_backend
from ..model_card import model_card
from ..params import record_keys
from ..training import select_device
from . import FEATURES, MODEL, PREDICTIONS, SPLIT_TABLE, check_model_fits, load, subset_rows, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    split = load(SPLIT_TABLE, "split")
    store = load(FEATURES / "images.npy", "features")
    backend = load_backend(MODEL, select_device(p.train.device))
    ckpt = backend.meta
    check_model_fits(ckpt, store, split)
    train = split[split["subset"] == "train"]
    baseline = constant_box(split)
    report, rows = {}, {}
    for s in ("valid", "test"):
        idx = subset_rows(split, s)
        pred = predict_images(backend, store[idx])
        report[s], rows[s] = evaluate_subset(pred, split.iloc[idx], baseline)
    test = split.iloc[subset_rows(split, "test")]
    images, boxes, keep = shifted_views(test, ckpt["image_size"])
    if len(keep):  # a data set of small images may have no sign large enough to shift
        report["test_shifted"] = shifted_metrics(predict_images(backend, images), boxes,
                                                 test["class_id"].to_numpy()[keep], baseline)
    report["loss_weight"] = ckpt["loss_weight"]
    report["best_epoch"] = ckpt["epoch"]
    report["constant_box"] = [round(v, 4) for v in baseline[0].tolist()]
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


def score(path: str | Path, device: str = "cpu") -> dict:
    """Any model file (the `.pt`, or an ONNX export: `tsloc evaluate --model FILE`) on this pipeline's
    validation and test images, with the stage's metrics; nothing is written."""
    split = load(SPLIT_TABLE, "split")
    store = load(FEATURES / "images.npy", "features")
    backend = load_backend(path, select_device(device))
    check_model_fits(backend.meta, store, split, path)
    report = {"model": str(path), "backend": backend.name}
    for s in ("valid", "test"):
        idx = subset_rows(split, s)
        report[s] = evaluate_subset(predict_images(backend, store[idx]), split.iloc[idx], constant_box(split))[0]
    return report
