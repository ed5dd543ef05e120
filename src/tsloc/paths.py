"""Every path the stages share, in one place: what one stage writes and another reads (dvc.yaml's
`outs` and `deps`), relative to the repository root where DVC runs them; and where a relative
data path given in params is taken from."""
from __future__ import annotations

import os
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
# the scene branch
SCENES = Path("data/scenes")
SCENES_RAW = SCENES / "raw"                 # frames a stage generated or extracted
SCENE_TABLE = SCENES / "boxes.csv"          # one row per box, and per frame without a sign
SCENE_CLASSES = SCENES / "classes.csv"      # class_id, name, category
SCENES_INGEST_REPORT = Path("reports/scenes_ingest.json")
SCENE_SPLIT = SCENES / "split.csv"          # the scene table with each frame's subset
SCENES_SPLIT_REPORT = Path("reports/scenes_split.json")
DETECTOR = Path("models/detector.pt")
DETECTOR_ONNX = DETECTOR.with_suffix(".onnx")
DETECTOR_INT8 = DETECTOR.with_suffix(".int8.onnx")  # written only when it keeps AP50 (detector_export)
DETECTOR_EXPORT_REPORT = Path("reports/detector_export.json")
DETECTOR_LIVE = Path("dvclive-detector")
DETECTOR_RESUME = Path("checkpoints/detector.pt")
DETECTOR_REPORT = Path("reports/detector_train.json")
DETECTOR_METRICS = Path("metrics/detector.json")
REFINER = Path("models/refiner.pt")          # beside the detector: its boxes tightened (tsloc.serving.backend.Refined)
REFINER_ONNX = REFINER.with_suffix(".onnx")
REFINER_REPORT = Path("reports/refiner_train.json")
REFINER_METRICS = Path("metrics/refiner.json")
SCENES_METRICS = Path("metrics/scenes.json")
SCENES_REPORT = Path("reports/scenes_evaluate.json")
SCENES_PLOTS = Path("plots/scenes")          # precision-recall curves (csv, for dvc plots)
SCENES_GALLERY = Path("plots/scenes_gallery.png")
SCENES_FALSE_POSITIVES = Path("plots/scenes_false_positives.png")
OPERATING_POINT = Path("models/operating_point.json")  # chosen on validation; `tsloc detect` reads it beside the detector
SCENES_DETECTIONS = SCENES / "detections_test.csv"

# the drive: a video with true tracks (the synthetic drive), tracked and made into an inventory
DRIVE = Path("data/drive")
DRIVE_RAW = DRIVE / "raw"                   # the video, its true tracks and classes (the synthetic drive's)
DRIVE_VIDEO = DRIVE_RAW / "drive.mp4"
DRIVE_TRUTH = DRIVE_RAW / "tracks.csv"      # frame, time, track_id, class_id, left, top, right, bottom
DRIVE_CLASSES = DRIVE_RAW / "classes.csv"
DRIVE_GPX = DRIVE_RAW / "drive.gpx"         # the camera's track, a point a second
DRIVE_INVENTORY = DRIVE / "inventory.csv"   # one row per sign found; its crops in DRIVE / "inventory"
DRIVE_TRACKS = DRIVE / "tracks_found.csv"   # every tracked detection of every searched frame
DRIVE_METRICS = Path("metrics/drive.json")
DRIVE_REPORT = Path("reports/drive_evaluate.json")
DRIVE_TIMELINE = Path("plots/drive_timeline.png")


def repo_root(cwd: Path | None = None) -> Path:
    """The repository a relative `data.path` is taken from.

    `dvc exp run --temp` and `--queue` run the pipeline in `<repo>/.dvc/tmp/exps/<tmpdir>`: a relative
    path is resolved against `<repo>`, not against that copy."""
    cwd = Path(cwd or os.getcwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def resolve_data_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def first_existing(*paths: Path) -> Path:
    """The first of `paths` that exists (the last when none does: its error names what to make)."""
    return next((p for p in paths if p.exists()), paths[-1])
