"""Stage `evaluate`: the model on valid, test and shifted test views; reports, metrics and the model card."""
from __future__ import annotations

import json
from pathlib import Path

from ..crops.checkpoint import check_fits
from ..crops.evaluation import (class_table, class_table_markdown, constant_box, evaluate_subset, headline,
                                predict_images, shifted_metrics, shifted_views)
from ..crops.model_card import model_card
from ..device import select_device
from ..io import atomic_path, write_csv, write_json
from ..paths import (CLASS_ACCURACY, EVALUATE_METRICS, EVALUATE_PLOTS, EVALUATE_REPORT, IMAGE_STORE, INGEST_REPORT,
                     MODEL, MODEL_CARD, PREDICTIONS, SPLIT_REPORT, SPLIT_TABLE)
from ..serving.backend import load_backend
from . import load, record_keys, subset_rows, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    split = load(SPLIT_TABLE, "split")
    store = load(IMAGE_STORE, "features")
    backend = load_backend(MODEL, select_device(p.train.device))
    ckpt = backend.meta
    check_fits(ckpt, store, split, MODEL)
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
    write_csv(CLASS_ACCURACY.with_suffix(".csv"), table, float_format="%.4f")
    with atomic_path(CLASS_ACCURACY.with_suffix(".md")) as tmp:
        tmp.write_text(class_table_markdown(table))
    write_csv(EVALUATE_PLOTS / "confusion_test.csv", rows["test"][["actual", "predicted"]])
    write_csv(EVALUATE_PLOTS / "class_accuracy_test.csv",
              table.loc[table["test_images"] > 0, ["class_id", "accuracy"]], float_format="%.4f")
    write_csv(PREDICTIONS, rows["test"], float_format="%.5f")
    write_json(EVALUATE_REPORT, report)
    write_json(EVALUATE_METRICS, headline(report))
    card = model_card(ckpt, json.loads(INGEST_REPORT.read_text()), json.loads(SPLIT_REPORT.read_text()), report, table)
    with atomic_path(MODEL_CARD) as tmp:
        tmp.write_text(card)
    record_keys("evaluate", p)
    return report


def score(path: str | Path, device: str = "cpu") -> dict:
    """Any model file (the `.pt`, or an ONNX export: `tsloc evaluate --model FILE`) on this pipeline's
    validation and test images, with the stage's metrics; nothing is written."""
    split = load(SPLIT_TABLE, "split")
    store = load(IMAGE_STORE, "features")
    backend = load_backend(path, select_device(device))
    check_fits(backend.meta, store, split, path)
    report = {"model": str(path), "backend": backend.name}
    for s in ("valid", "test"):
        idx = subset_rows(split, s)
        report[s] = evaluate_subset(predict_images(backend, store[idx]), split.iloc[idx], constant_box(split))[0]
    return report
