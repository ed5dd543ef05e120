"""Every path the stages share, in one place: what one stage writes and another reads (dvc.yaml's
`outs` and `deps`), relative to the repository root where DVC runs them."""
from __future__ import annotations

from pathlib import Path

# ingest
RAW = Path("data/raw")                      # images a stage extracted or generated
DOWNLOADS = Path("data/downloads")          # downloaded archives, kept for reuse
METADATA = Path("data/metadata.csv")        # one row per unique image
CLASSES = Path("data/classes.csv")          # class ids and names
INGEST_REPORT = Path("reports/ingest.json")
# split
SPLIT_TABLE = Path("data/split.csv")
SPLIT_REPORT = Path("reports/split.json")
# features
FEATURES = Path("data/features")
IMAGE_STORE = FEATURES / "images.npy"
POOLED = FEATURES / "pooled.npy"
# train
MODEL = Path("models/model.pt")
LIVE = Path("dvclive")
RESUME = Path("checkpoints/train.pt")       # the state after the last complete epoch (not a DVC output)
TRAIN_REPORT = Path("reports/train.json")
TRAIN_METRICS = Path("metrics/train.json")
# evaluate
PREDICTIONS = Path("data/predictions_test.csv")
EVALUATE_REPORT = Path("reports/evaluate.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")
MODEL_CARD = Path("models/MODEL_CARD.md")
CLASS_ACCURACY = Path("reports/class_accuracy")   # .csv and .md
EVALUATE_PLOTS = Path("plots/evaluate")
# export
ONNX = MODEL.with_suffix(".onnx")
INT8 = MODEL.with_suffix(".int8.onnx")
EXPORT_REPORT = Path("reports/export.json")
# plots
PLOTS = Path("plots")
SPLIT_PLOTS = PLOTS / "split"
