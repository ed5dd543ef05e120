"""The pipeline's stages as functions, one module per stage (`tsloc.pipeline.train.run`, ...): each
reads its inputs and only the params it declares in dvc.yaml, and imports only what it uses, so
that dvc.yaml can declare each stage's code exactly (a test compares the two).

The scripts in stages/ and the `tsloc` command both call these, so a user and DVC run the same code.
This module holds what the stages share: the paths between them and how they are read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.table import DTYPES
from ..errors import DataError
from ..params import Tracked, load_params

SPLIT_TABLE = Path("data/split.csv")
FEATURES = Path("data/features")
MODEL = Path("models/model.pt")
LIVE = Path("dvclive")
PREDICTIONS = Path("data/predictions_test.csv")


def load(path: Path, what: str):
    """An upstream stage's output (a .npy memory-mapped, a .csv as a table); missing: say which stage makes it."""
    if not path.exists():
        raise DataError(f"{path}: not found (run the {what} stage first: dvc repro {what})")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    return pd.read_csv(path, dtype=DTYPES)


def tracked_params(params_file: str) -> Tracked:
    return Tracked(load_params(params_file))


def subset_rows(split: pd.DataFrame, subset: str) -> np.ndarray:
    return np.flatnonzero(split["subset"].to_numpy() == subset)


def check_model_fits(ckpt: dict, store, split, model: Path | str = MODEL) -> None:
    """A model from another run (a stale or copied models/model.pt) against this image store and
    data: one clear message instead of a shape error or wrong class names."""
    size = store.shape[1]
    if ckpt["image_size"] != size:
        raise DataError(f"{model}: the model takes {ckpt['image_size']}-px images but {FEATURES / 'images.npy'} "
                        f"holds {size}-px ones (data.image_size changed since training?): run dvc repro")
    top = int(split["class_id"].max())
    if top >= ckpt["num_classes"]:
        raise DataError(f"{model}: the model knows {ckpt['num_classes']} classes but {SPLIT_TABLE} has class id "
                        f"{top} (trained on another data set?): run dvc repro")
