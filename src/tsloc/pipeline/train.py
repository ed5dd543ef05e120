"""Stage `train`: fit the model on the training subset, log each epoch with DVCLive, write the model."""
from __future__ import annotations

import json
import time
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch

from ..boxes import relative_boxes
from ..crops import checkpoint
from ..crops.augment import settings as augment_settings
from ..crops.batches import Batches, features_source, images_source
from ..crops.distributed import launch, launched, leave
from ..crops.loop import fit
from ..crops.model import build_model
from ..crops.runtime import runtime
from ..data.table import load_classes
from ..device import peak_memory
from ..errors import DataError
from ..io import write_json
from ..params import uses_cached_features
from ..paths import CLASSES, IMAGE_STORE, LIVE, MODEL, POOLED, RESUME, SPLIT_TABLE, TRAIN_METRICS, TRAIN_REPORT
from ..resume import Resume, resume_key
from . import load, log_epoch, open_live, record_keys, subset_rows, tracked_params


def crop_margin(rows) -> float:
    """The border around the sign in the training crops, as a share of the sign's size per side (the
    median over the crops of their four sides' mean): what the scene branch cuts around a detection
    before the model names it."""
    w, h = rows["right"] - rows["left"], rows["bottom"] - rows["top"]
    sides = [rows["left"] / w, rows["top"] / h, (rows["width"] - rows["right"]) / w, (rows["height"] - rows["bottom"]) / h]
    return round(float(np.median(sum(sides) / 4)), 4) if len(rows) else 0.1


def _trim_history(epochs: int) -> None:
    """Keep DVCLive's per-epoch rows of the first `epochs` epochs (steps 0 .. epochs - 1)."""
    for tsv in (LIVE / "plots" / "metrics").rglob("*.tsv"):
        rows = pd.read_csv(tsv, sep="\t")
        rows[rows["step"] < epochs].to_csv(tsv, sep="\t", index=False)


def run(params_file: str = "params.yaml") -> dict | None:
    """Train (one process, or `train.processes` ranks under torchrun); rank 0 writes the outputs and
    returns its report, the other ranks None."""
    p = tracked_params(params_file)
    if p.train.processes > 1 and not launched():
        launch(p.train.processes, ["train", "--params", params_file])
        return json.loads(TRAIN_REPORT.read_text())
    rt = runtime(p.train.device, p.train.precision, p.train.processes)
    try:
        return _train(p, rt)
    finally:
        leave(rt.world)


def _train(p, rt) -> dict | None:
    split = load(SPLIT_TABLE, "split")
    cached = uses_cached_features(p)  # pooled features, or the images (then pooled.npy has no rows)
    source = POOLED if cached else IMAGE_STORE
    inputs = load(source, "features")
    if len(inputs) != len(split):
        raise DataError(f"{source}: {len(inputs)} rows but {SPLIT_TABLE} has {len(split)}; run dvc repro")
    device, world = rt.device, rt.world
    t = p.train
    names = load_classes()
    torch.manual_seed(t.seed)  # the heads' initialisation too: a CPU run repeats exactly
    model = build_model(p.model.backbone, p.model.weights, len(names), p.model.dropout,
                        image_size=p.data.image_size, trainable_blocks=p.model.finetune_blocks,
                        box=p.model.box_head).to(device)
    eval_subsets = ("valid", "test") if t.eval_test_each_epoch else ("valid",)
    augmentation = augment_settings(t.augment)
    generator = torch.Generator().manual_seed(t.seed)  # the permutations: the same on every rank
    # The augmentation's draws: the same generator in one process (as always); one per rank with ranks.
    aug_generator = (torch.Generator().manual_seed((t.seed + 1) * 1_000_003 + world.rank) if world.distributed
                     else generator)
    subsets = {}
    for s in ("train",) + eval_subsets:
        rows = subset_rows(split, s)
        part = split.iloc[rows]
        boxes = relative_boxes(part)
        fetch = (features_source(np.array(inputs[rows]), boxes, device) if cached else
                 images_source(np.array(inputs[rows]), boxes, device, augmentation, aug_generator))
        subsets[s] = Batches(fetch, torch.as_tensor(part["class_id"].to_numpy(copy=True)), boxes)
    model.start_boxes_at(subsets["train"].boxes.mean(0))
    resume = Resume(RESUME, resume_key({"recipe": p.recipe, "image_size": p.data.image_size,
                                        "model": p.model.as_dict(), "train": p.train.as_dict()},
                                       read=(SPLIT_TABLE, CLASSES), stamped=(POOLED, IMAGE_STORE)))
    done = resume.epochs_done() if world.main else 0
    if done:
        _trim_history(done)  # epochs logged after the saved state are logged again
    live = open_live(LIVE, resumed=bool(done)) if world.main else nullcontext()
    with live:
        if world.main:
            live.step = done

        def log(epoch, row, objective):
            log_epoch(live, {**row, "loss_weight": objective.loss_weight.item()})

        started = time.perf_counter()
        best = fit(model, subsets, t, image_size=p.data.image_size, rt=rt, log=log, generator=generator,
                   aug_generator=aug_generator, progress=not cached, resume=resume)
        seconds = time.perf_counter() - started
    if not world.main:
        return None
    ckpt = checkpoint.make(model, {k: v.cpu() for k, v in best["state"].items()}, backbone=p.model.backbone,
                           image_size=p.data.image_size, class_names=names, epoch=best["epoch"],
                           loss_weight=best["loss_weight"], weights=p.model.weights, recipe=p.recipe,
                           train={**t.as_dict(), "finetune_blocks": p.model.finetune_blocks},
                           crop_margin=crop_margin(split[split["subset"] == "train"]))
    checkpoint.save(MODEL, ckpt)
    RESUME.unlink(missing_ok=True)  # the model is written: nothing left to continue
    # The training time, measured here, is what the 20-minute budget of a recipe is about.
    report = {"best_epoch": best["epoch"], "best_valid_loss": best["loss"], "loss_weight": ckpt["loss_weight"],
              "train_minutes": round(seconds / 60, 2), "train_seconds": round(seconds, 2),
              "seconds_per_epoch": round(seconds / t.epochs, 2),
              "device": str(device), "threads": torch.get_num_threads(),
              "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "resumed_after_epoch": done}
    if world.distributed or rt.precision != "fp32":  # new keys only where they say something
        report.update(processes=world.size, precision=rt.precision)
    report.update(peak_memory(device))
    write_json(TRAIN_REPORT, report)
    write_json(TRAIN_METRICS, {"train_minutes": report["train_minutes"]})
    record_keys("train", p)
    return report
