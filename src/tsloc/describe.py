"""A model file described in words and in a short dict, for people (predict's stderr line, the model
card) and for programs (`GET /v1/model`, `tsloc.load(...).info`). Reads only the description a
file carries (tsloc.crops.checkpoint, tsloc.onnxfile.read_meta), so it imports no torch."""
from __future__ import annotations

import json
from pathlib import Path

from .params import FROM_SCRATCH
from .paths import EVALUATE_METRICS, INGEST_REPORT


def package_version() -> str:
    """tsloc's installed version (`tsloc --version`, the server's OpenAPI description)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("tsloc")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


DATASETS = {"belgiumtsc": "BelgiumTSC", "gtsrb": "GTSRB", "manifest": "a manifest of one's own images"}


def dataset_name(fmt: str) -> str:
    return DATASETS.get(fmt, fmt)


def backbone_text(ckpt: dict) -> str:
    """The backbone, where its weights came from and how much of it was trained."""
    name, weights = ckpt["backbone"], ckpt.get("weights", "imagenet")
    blocks = ckpt.get("train", {}).get("finetune_blocks", 0)
    origin = f"`{name}` (tsloc.backbone)" if name in FROM_SCRATCH else f"torchvision `{name}`"
    if weights == "none":
        start, verb, idle = " from random weights", "trained", "untrained"
    else:
        start, verb, idle = f", {'ImageNet weights (imagenet)' if weights == 'imagenet' else f'weights from {weights}'}", "fine-tuned", "frozen"
    return f"{origin}{start}, " + (idle if blocks == 0 else f"{verb} entirely" if blocks < 0 else f"its last {blocks} blocks {verb}")


def one_line(ckpt: dict, ingest: str | Path = INGEST_REPORT, metrics: str | Path = EVALUATE_METRICS) -> str:
    """The model in a line: recipe, data set and test accuracy (the file's own card, as the ready
    models carry, else the pipeline's reports beside it)."""
    text = f"recipe {ckpt.get('recipe', 'notebook')}, {ckpt['num_classes']} classes"
    card = ckpt.get("card")
    if card:
        return (f"{text}, trained on {card['data']['name']}; test accuracy "
                f"{100 * card['test']['accuracy']:.2f}% on {card['test']['images']} images")
    try:
        data = json.loads(Path(ingest).read_text())
        test = json.loads(Path(metrics).read_text())["test"]
    except (OSError, ValueError, KeyError):
        return text + " (no pipeline reports beside it to say more)"
    return (f"{text}, trained on {data.get('source')} {dataset_name(data.get('format', 'belgiumtsc'))} data; "
            f"test accuracy {100 * test['accuracy']:.2f}% ({metrics}). Another model: --model FILE")


def summary(meta: dict) -> dict:
    """What a served model is: its classes, input, recipe, precision and, where the file carries its
    card (the ready models), the data it learnt from and its test figures."""
    export = meta.get("export", {})
    card = meta.get("card", {})
    return {
        "kind": meta.get("kind", "crop classifier and localiser"),
        "classes": [{"class_id": int(i), "class_name": n} for i, n in zip(meta["class_ids"], meta["class_names"])],
        "input_size": meta.get("image_size"),
        "backbone": meta.get("backbone"),
        "recipe": meta.get("recipe", "notebook"),
        "precision": export.get("precision", "fp32 (PyTorch)"),
        "box_format": meta.get("box_format"),
        "crop_margin": meta.get("crop_margin"),
        "data": card.get("data"),
        "test": card.get("test"),
        "trained_by": card.get("command"),
        "commit": card.get("commit"),
    }
