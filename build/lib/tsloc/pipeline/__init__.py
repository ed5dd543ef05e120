"""The pipeline's stages as functions, one module per stage (`tsloc.pipeline.train.run`, ...): each
reads its inputs and only the params it declares in dvc.yaml, and imports only what it uses, so
that dvc.yaml can declare each stage's code exactly (a test compares the two).

The scripts in stages/ call these through tsloc.guard.stage_main, and so does the `tsloc`
command: a user and DVC run the same code, and no stage depends on the command line. This module
holds how the stages read each other's outputs (their paths: tsloc.paths).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.table import DTYPES
from ..errors import DataError
from ..params import Tracked, load_params


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
