"""The pipeline's stages as functions: each reads its inputs and only the params it declares in dvc.yaml.

The scripts in stages/ and the `tsloc` command both call these, so a user and DVC run the same code.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import plots
from .data.ingest import ingest, load_classes, load_metadata
from .data.split import SUBSETS, class_frequencies, make_split
from .data.images import open_rgb
from .data.store import NpyWriter, write_store
from .data.table import DTYPES
from .errors import DataError
from .evaluation import (class_table, headline, class_table_markdown, evaluate_subset, predict_images, relative_boxes,
                         shifted_metrics, shifted_views)
from .io import atomic_path, write_csv, write_figure, write_json, write_torch
from .model import backbone_features, build_model, load_model
from .model_card import model_card
from .params import Tracked, load_params, record_keys, uses_cached_features
from .training import (Batches, LossConfig, OptimConfig, checkpoint, feature_extractor, features_source, fit,
                       epoch_sizes, images_source, select_device)

SPLIT_TABLE = Path("data/split.csv")
FEATURES = Path("data/features")
MODEL = Path("models/model.pt")
LIVE = Path("dvclive")
PREDICTIONS = Path("data/predictions_test.csv")


def _load(path: Path, what: str):
    if not path.exists():
        raise DataError(f"{path}: not found (run the {what} stage first: dvc repro {what})")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    return pd.read_csv(path, dtype=DTYPES)


def _params(params_file: str) -> Tracked:
    return Tracked(load_params(params_file))


def run_ingest(params_file: str = "params.yaml") -> dict:
    p = _params(params_file)
    metrics = ingest(p.data)
    record_keys("ingest", p)
    return metrics


def run_split(params_file: str = "params.yaml") -> dict:
    p = _params(params_file)
    meta = load_metadata()
    table, report = make_split(meta, p.split.strategy, p.split.valid_fraction, p.split.seed, p.split.folds,
                               p.split.fold, p.split.test_fraction)
    freq = class_frequencies(table, len(load_classes()))
    for subset in SUBSETS:
        counts = freq[freq["subset"] == subset]
        write_csv(f"plots/split/class_frequency_{subset}.csv", counts[["class_id", "count"]])
        fig = plots.class_frequency(counts, f"{subset}: {counts['count'].sum()} images")
        write_figure(f"plots/class_frequency_{subset}.png", fig)
        plt.close(fig)
    write_csv(SPLIT_TABLE, table)
    write_json("reports/split.json", report)
    record_keys("split", p)
    return report


def run_features(params_file: str = "params.yaml") -> dict:
    """Decode every image once into the array store and run the frozen backbone once per image."""
    p = _params(params_file)
    meta = load_metadata()
    body, channels = backbone_features(p.model.backbone, p.model.weights)  # before decoding: bad weights fail fast
    features = feature_extractor(body, select_device(p.train.device))
    # Decoded, written and run through the backbone chunk by chunk, both files written as they come:
    # memory holds one chunk whatever the number of images.
    with (atomic_path(FEATURES / "images.npy") as images, atomic_path(FEATURES / "pooled.npy") as tmp,
          NpyWriter(tmp, (len(meta), channels), np.float32) as pooled):
        shape = write_store(meta, p.data.image_size, images, on_chunk=lambda chunk: pooled.write(features(chunk)))
    record_keys("features", p)
    return {"images": int(shape[0]), "store_shape": list(shape), "features": list(pooled.shape)}


def _subset_rows(split: pd.DataFrame, subset: str) -> np.ndarray:
    return np.flatnonzero(split["subset"].to_numpy() == subset)


def run_train(params_file: str = "params.yaml") -> dict:
    from dvclive import Live

    p = _params(params_file)
    split = _load(SPLIT_TABLE, "split")
    pooled = _load(FEATURES / "pooled.npy", "features")
    if len(pooled) != len(split):
        raise DataError(f"{FEATURES / 'pooled.npy'}: {len(pooled)} rows but {SPLIT_TABLE} has {len(split)}; "
                        f"run dvc repro")
    device = select_device(p.train.device)
    t = p.train
    names = load_classes()
    torch.manual_seed(t.seed)  # the heads' initialisation too: a CPU run repeats exactly
    model = build_model(p.model.backbone, p.model.weights, len(names), p.model.dropout,
                        image_size=p.data.image_size, trainable_blocks=p.model.finetune_blocks,
                        box=p.model.box_head).to(device)
    with torch.no_grad():
        model.loss_weight.fill_(t.loss_weight)
    eval_subsets = ("valid", "test") if t.eval_test_each_epoch else ("valid",)
    a = t.augment
    augmentation = {"margin": a.margin, "rotation": a.rotation, "color": a.color, "blur": a.blur,
                    "recrop": a.recrop}
    augmentation = augmentation if a.enabled else None
    cached = uses_cached_features(p)
    store = None if cached else _load(FEATURES / "images.npy", "features")
    generator = torch.Generator().manual_seed(t.seed)
    subsets = {}
    for s in ("train",) + eval_subsets:
        rows = _subset_rows(split, s)
        part = split.iloc[rows]
        boxes = relative_boxes(part)
        fetch = (features_source(np.array(pooled[rows]), boxes, device) if cached else
                 images_source(model, np.array(store[rows]), boxes, device, augmentation, generator))
        subsets[s] = Batches(fetch, torch.as_tensor(part["class_id"].to_numpy(copy=True)), boxes)
    model.start_boxes_at(subsets["train"].boxes.mean(0))
    loss_cfg = LossConfig(p.data.image_size, t.box_loss, t.loss_balance, t.label_smoothing, t.loss_weight)
    optim_cfg = OptimConfig(t.lr, t.optimizer, t.weight_decay, t.backbone_lr, t.schedule, t.warmup_epochs)
    with Live(str(LIVE), dvcyaml=False, save_dvc_exp=False) as live:
        def log(epoch, row):
            for subset, metrics in row.items():
                for name, value in metrics.items():
                    live.log_metric(f"{subset}/{name}", value)
            live.log_metric("loss_weight", model.loss_weight.item())
            live.next_step()

        started = time.perf_counter()
        best = fit(model, subsets, epochs=t.epochs, batch_size=t.batch_size, seed=t.seed,
                   num_classes=len(names), loss_cfg=loss_cfg, optim_cfg=optim_cfg, log=log,
                   eval_subsets=eval_subsets, generator=generator, progress=not cached,
                   weighting=t.class_weights, box_weighting=t.box_weights, keep=t.keep,
                   sizes=epoch_sizes(t.start_size, p.data.image_size, t.epochs) if t.start_size else None,
                   eval_every=t.eval_every, ema_decay=t.ema_decay)
        seconds = time.perf_counter() - started
    ckpt = checkpoint(model, {k: v.cpu() for k, v in best["state"].items()}, backbone=p.model.backbone,
                      image_size=p.data.image_size, class_names=names, epoch=best["epoch"])
    ckpt["weights"] = p.model.weights
    ckpt["recipe"] = p.recipe
    ckpt["train"] = {**t.as_dict(), "finetune_blocks": p.model.finetune_blocks}
    write_torch(MODEL, ckpt)
    # The training time, measured here, is what the 20-minute budget of a recipe is about.
    report = {"best_epoch": best["epoch"], "best_valid_loss": best["loss"], "loss_weight": ckpt["loss_weight"],
              "train_minutes": round(seconds / 60, 2), "train_seconds": round(seconds, 2),
              "seconds_per_epoch": round(seconds / t.epochs, 2),
              "device": str(device), "threads": torch.get_num_threads()}
    write_json("reports/train.json", report)
    write_json("metrics/train.json", {"train_minutes": report["train_minutes"]})
    record_keys("train", p)
    return report


def run_evaluate(params_file: str = "params.yaml") -> dict:
    p = _params(params_file)
    split = _load(SPLIT_TABLE, "split")
    store = _load(FEATURES / "images.npy", "features")
    model, ckpt = load_model(MODEL)
    device = select_device(p.train.device)
    train = split[split["subset"] == "train"]
    constant_box = relative_boxes(train).mean(0, keepdim=True)
    report, rows = {}, {}
    for s in ("valid", "test"):
        idx = _subset_rows(split, s)
        pred = predict_images(model, np.array(store[idx]), device)
        report[s], rows[s] = evaluate_subset(pred, split.iloc[idx], constant_box)
    test = split.iloc[_subset_rows(split, "test")]
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


def run_visualize(params_file: str = "params.yaml") -> dict:
    p = _params(params_file)
    rng = np.random.default_rng(p.visualize.seed)
    split = _load(SPLIT_TABLE, "split")
    preds = _load(PREDICTIONS, "evaluate")
    names = load_classes()
    fig = plots.history(_history())
    write_figure("plots/history.png", fig)
    plt.close(fig)

    train = split[split["subset"] == "train"]
    items = []
    for r in train.iloc[rng.choice(len(train), size=min(10, len(train)), replace=False)].itertuples():
        items.append({"image": _image(r.path), "title": f"{r.class_id}: {names[r.class_id][:24]}",
                      "boxes": [((r.left, r.top, r.right, r.bottom), "lime", "-")]})
    fig = plots.gallery(items)
    write_figure("plots/train_gallery.png", fig)
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
                      "title": f"Label: {r.actual}\nPrediction: {r.predicted} ({100 * r.probability:.2f}%)",
                      "title_color": "green" if r.actual == r.predicted else "red",
                      "boxes": [((t.left, t.top, t.right, t.bottom), "lime", "-"), (pred_box, "red", "--")]})
    fig = plots.gallery(items)
    write_figure("plots/predictions.png", fig)
    plt.close(fig)
    record_keys("visualize", p)
    return {"right_shown": int(min(5, len(right))), "wrong_shown": int(min(5, len(wrong)))}
