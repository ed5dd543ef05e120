"""models/MODEL_CARD.md: what the model is, what it was trained and tested on, how well it does,
where it is weak, and what it is for."""
from __future__ import annotations

import pandas as pd

from ..describe import backbone_text, dataset_name


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def model_card(ckpt: dict, ingest: dict, split: dict, metrics: dict, table: pd.DataFrame) -> str:
    t, v = metrics["test"], metrics["valid"]
    fmt = ingest.get("format", "belgiumtsc")
    dataset = dataset_name(fmt)
    official = ingest['Training']['fingerprint']['digest'].startswith("e3f2108c")
    tested = table[table["test_images"] > 0].sort_values(["accuracy", "test_images"], ascending=[True, False])
    worst = tested.head(5)
    train = ckpt.get("train", {})
    blocks = train.get("finetune_blocks", 0)
    augment = train.get("augment", False)
    augmented = augment.get("enabled", False) if isinstance(augment, dict) else bool(augment)
    erase = augment.get("erase", 0) if isinstance(augment, dict) and augmented else 0  # older files: a bare bool
    covered = f" ({erase:.0%} with a patch of the sign covered)" if erase else ""
    augmented_text = f", trained on augmented images{covered}" if augmented else ""
    lines = [
        f"# Model card: traffic-sign classifier and localiser ({dataset})",
        "",
        "Written by the `evaluate` stage; figures are this model's, on the data named below.",
        "",
        "## Model",
        f"- Backbone: {backbone_text(ckpt)}{augmented_text}; dropout {ckpt['dropout']} and ReLU on the "
        f"pooled features into the class head (BatchNorm1d + Linear, {ckpt['num_classes']} classes); the box head "
        + ("reads a 4 x 4 grid of the last feature map (1x1 convolution, Linear)." if ckpt.get("box_head") == "spatial"
           else "(BatchNorm1d + Linear) reads the pooled features."),
        f"- Input: RGB resized (squashed) to {ckpt['image_size']}x{ckpt['image_size']} px, normalised with mean "
        f"{ckpt['mean']} and std {ckpt['std']}.",
        f"- Output: class probabilities and one box ({ckpt['box_format']}).",
        f"- Recipe: `{ckpt.get('recipe', 'notebook')}` (conf/recipe/{ckpt.get('recipe', 'notebook')}.yaml).",
        f"- Training: {train.get('optimizer', 'adam')}, lr {train.get('lr')}"
        + (f" (backbone x {train.get('backbone_lr')})" if blocks else "")
        + (f", weight decay {train['weight_decay']}" if train.get("weight_decay") else "")
        + (f", cosine schedule after {train.get('warmup_epochs')} warm-up epochs" if train.get("schedule") == "cosine" else "")
        + f", {train.get('epochs')} epochs"
        + (f" (progressive resizing from {train['start_size']} px)" if train.get("start_size") else "")
        + f", batch {train.get('batch_size')}, seed {train.get('seed')}; "
        f"cross-entropy ({train.get('class_weights', 'inverse')} class weights"
        + (f", label smoothing {train['label_smoothing']}" if train.get("label_smoothing") else "")
        + f") plus {train.get('box_loss', 'l1').upper()} box loss"
        + (f" ({train['box_weights']} class weights)" if train.get("box_weights", "same") != "same" else "")
        + f", {train.get('loss_balance', 'learned')} balance "
        f"(weight ends at {ckpt['loss_weight']:.2f}); "
        + (f"moving average of the weights (decay {train['ema_decay']} per step), " if train.get("ema_decay") else "")
        + ("checkpoint of the last epoch" if train.get("keep") == "last" else "checkpoint of the best validation loss")
        + f" (epoch {ckpt['epoch']}).",
        f"- Versions: torch {ckpt['versions']['torch']}, torchvision {ckpt['versions']['torchvision']}.",
        "",
        "## Data",
        f"- Data set: {dataset} (format `{fmt}`, source `{ingest.get('source')}`), {ckpt['num_classes']} classes "
        f"(ids and names in the model file) — Training {ingest['Training']['images']} images "
        f"({ingest['Training']['classes']} classes), Testing {ingest['Testing']['images']} images "
        f"({ingest['Testing']['classes']} classes); list digests {ingest['Training']['fingerprint']['digest'][:12]}… "
        f"and {ingest['Testing']['fingerprint']['digest'][:12]}…"
        + (" (the official BelgiumTSC release)." if official else
           " (not the official BelgiumTSC release: synthetic or modified data)." if fmt == "belgiumtsc" else "."),
        f"- Split `{split['strategy']}`"
        + (f" (cross-validation: fold {split['cross_validation']['fold']} of {split['cross_validation']['folds']} "
           f"is validation)" if "cross_validation" in split else "")
        + f": train {split['images']['train']}, valid {split['images']['valid']}, "
        f"test {split['images']['test']} images"
        + (f" (the data set has no test side: the test set was carved from it, "
           f"{100 * split['test_carved']['fraction']:.0f}% by whole signs)" if "test_carved" in split else "") + ".",
        "",
        "## Results",
        "| subset | images | accuracy | balanced accuracy | macro F1 | mean IoU | constant-box IoU | IoU >= 0.5 | IoU >= 0.75 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in (("test", t), ("valid", v)):
        lines.append(f"| {name} | {m['images']} | {_pct(m['accuracy'])} | {_pct(m['balanced_accuracy'])} | "
                     f"{_pct(m['macro_f1'])} | {_pct(m['mean_iou'])} | {_pct(m['constant_box_iou'])} | "
                     f"{_pct(m['iou_at_0.5'])} | {_pct(m['iou_at_0.75'])} |")
    beats = "beats" if t["mean_iou"] > t["constant_box_iou"] else "does NOT beat"
    lines += [
        "",
        f"The constant box is the mean training box predicted for every image: on the test set the localiser "
        f"{beats} it ({_pct(t['mean_iou'])} against {_pct(t['constant_box_iou'])}).",
    ]
    if "test_shifted" in metrics:
        s = metrics["test_shifted"]
        lines += [
            "",
            f"Shifted test views ({s['images']} test images with boxes of at least 40 px, re-cropped with random "
            f"margins of 0-45% per side): mean IoU {_pct(s['mean_iou'])} against {_pct(s['constant_box_iou'])} for the "
            f"constant box; accuracy {_pct(s['accuracy'])}.",
        ]
    else:
        lines += ["", "Shifted test views: none (no test sign has a box of at least 40 px)."]
    lines += [
        "",
        "## Weak spots: the five classes with the lowest test accuracy",
        "| class | name | test images | accuracy | share of training data |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in worst.itertuples():
        lines.append(f"| {r.class_id} | {r.class_name} | {r.test_images} | {_pct(r.accuracy)} | {_pct(r.train_share)} |")
    lines += [
        "",
        "Full per-class table: `reports/class_accuracy.md`.",
        "",
        "## Intended use and limits",
        "- For: naming a traffic sign and boxing it in an image that holds one sign with some margin "
        "around it (a crop from a detector or a person), as in BelgiumTSC. Not a detector: it does not find "
        f"signs in street scenes and always answers with one of its {ckpt['num_classes']} classes and one box.",
        "- Classes with few training images are the least reliable (see above)"
        + ("; several classes mix variants (speed limits of several values in one class), so the model does not "
           "read numbers." if fmt == "belgiumtsc" else "."),
        f"- Trained on the signs of {dataset} only; other countries' designs, conditions or viewpoints that data set "
        "lacks are outside what it has seen. Probabilities are not calibrated.",
        "- Not for safety-critical use (driving decisions) without a proper evaluation in that setting.",
        "",
    ]
    return "\n".join(lines)
