"""The data set formats, recognised in one place: `data.format` auto, belgiumtsc, gtsrb, manifest or gtsdb.

Each reader (`belgiumtsc`, `gtsrb`, `manifest`, `gtsdb`: signs cut out of GTSDB's frames) turns its layout into the one metadata table
(`tsloc.data.table`); nothing after ingest knows which format it came from.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import belgiumtsc, gtsdb, gtsrb, manifest
from .table import Dataset, check_test_classes

READERS = {"belgiumtsc": belgiumtsc, "gtsrb": gtsrb, "manifest": manifest, "gtsdb": gtsdb}  # in the order auto tries them
FORMATS = tuple(READERS)
LOOKED_FOR = ("BelgiumTSC: Training/ and Testing/ (here or one folder down); "
              "GTSRB: GTSRB/Final_Training/Images/ (here or one folder down); "
              f"manifest: a .csv file given as data.path, or {manifest.NAME} in the folder; "
              "GTSDB: gt.txt and frames NNNNN.ppm (here or one folder down); "
              "or the archives of either (BelgiumTSC_*.zip, GTSRB_Final_*.zip)")


def detect(path: Path) -> str:
    """The format of the data at `path`; one message saying what was looked for when none fits."""
    for name, module in READERS.items():
        if module.locate(path) is not None:
            return name
    raise DataError(f"{path}: no data set format recognised (looked for {LOOKED_FOR})")


def recognised(fmt: str, path: Path) -> bool:
    """Whether `path` holds a data set of format `fmt` (auto: of any format) as it is, unextracted."""
    return any(READERS[f].locate(path) is not None for f in (FORMATS if fmt == "auto" else (fmt,)))


def read(fmt: str, path: Path, crop_margin: float = 0.0, crops: Path | None = None) -> Dataset:
    """Read the data set at `path` in format `fmt` (auto: detected); refuse test classes never trained on."""
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt in ("manifest", "gtsdb"):  # whole frames: each box cut out with the margin
        data = READERS[fmt].read(path, crop_margin, crops)
    elif crop_margin:
        raise DataError(f"{path}: data.crop_margin applies to whole frames (a manifest of frames, GTSDB), not to "
                        f"{fmt} (its images are sign crops already)")
    else:
        data = READERS[fmt].read(path)
    check_test_classes(data.table, data.names)
    data.format = fmt
    return data
