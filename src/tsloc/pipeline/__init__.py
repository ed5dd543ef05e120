"""The pipeline's stages as functions, one module per stage (`tsloc.pipeline.train.run`, ...): each
reads its inputs and only the params it declares in dvc.yaml, and imports only what it uses, so
that dvc.yaml can declare each stage's code exactly (a test compares the two).

The scripts in stages/ call these through tsloc.guard.stage_main, and so does the `tsloc`
command: a user and DVC run the same code, and no stage depends on the command line. This module
holds how the stages read each other's outputs (their paths: tsloc.paths).
"""
from __future__ import annotations

from ..numerics import pin_cpu_kernels

pin_cpu_kernels()  # before anything imports torch, hence above the imports below (tsloc.numerics)

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.table import DTYPES
from ..errors import DataError
from ..io import significant
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


def open_live(folder: Path, resumed: bool):
    """DVCLive for a training stage: its metrics under `folder`, no dvc.yaml of its own (the pipeline's
    declares the plots) and no experiment of its own (`dvc exp run` makes that); `resumed` continues
    the history of an interrupted run."""
    from dvclive import Live
    return Live(str(folder), dvcyaml=False, save_dvc_exp=False, resume=resumed)


def log_epoch(live, row: dict, prefix: str = "") -> None:
    """One epoch's figures to DVCLive, nested keys joined by "/" ({"train": {"loss": ..}} is train/loss),
    floats to 6 significant digits; then the next step."""
    for key, value in row.items():
        if isinstance(value, dict):
            log_epoch(live, value, f"{prefix}{key}/")
        else:
            live.log_metric(f"{prefix}{key}", significant(value) if isinstance(value, float) else value)
    if not prefix:
        live.next_step()


def record_keys(stage: str, tracked: Tracked) -> None:
    """Append the keys a stage read and the tsloc modules it loaded to $TSLOC_PARAMS_LOG (set by the
    tests, which compare both with the stage's `params` and `deps` in dvc.yaml), one JSON line."""
    log = os.environ.get("TSLOC_PARAMS_LOG")
    if log:
        package = Path(__file__).resolve().parents[1]
        modules = sorted(Path(m.__file__).resolve().relative_to(package.parent.parent).as_posix()
                         for name, m in list(sys.modules.items())
                         if (name == "tsloc" or name.startswith("tsloc.")) and getattr(m, "__file__", None))
        with open(log, "a") as f:
            f.write(json.dumps({"stage": stage, "keys": sorted(tracked.keys_read), "modules": modules,
                                "package": str(package)}) + "\n")
