"""The ingest stage: put the images where `data.source` says, read them once in their format
(`data.format`), write the metadata table and the class list.

- synthetic: generated into `data/raw/` in `data.synthetic.format`;
- download: the official BelgiumTSC zips fetched into `data/downloads/` (kept for reuse), extracted into
  `data/raw/`;
- local: `data.path` is read in place when its layout is recognised (a folder, or a manifest .csv);
  a folder holding only archives has them extracted into `data/raw/` and read there.
Metadata paths are relative to the repository for images inside it (so that `dvc exp run --temp`
works on its own copy) and absolute for a folder read in place.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io import atomic_path, write_csv, write_json
from ..paths import CLASSES, DOWNLOADS, INGEST_REPORT, METADATA, RAW, resolve_data_path
from . import formats
from .archives import extract, is_archive
from .download import fetch_official
from .synthetic import generate
from .table import SIDES


def _stage_images(data, tmp: Path) -> tuple[Path, dict]:
    """Fill `tmp` (the future data/raw) when images are generated or extracted; return where the data set
    is (a folder, or a manifest file) and how it got there."""
    if data.source == "synthetic":
        size, seed, fmt = data.synthetic.size, data.synthetic.seed, data.synthetic.format
        generate(tmp, size=size, seed=seed, fmt=fmt)
        return tmp, {"source": "synthetic", "size": size, "seed": seed, "format": fmt}
    if data.source == "download":
        base_url = data.base_url
        return fetch_official(base_url, DOWNLOADS, tmp), {"source": "download", "base_url": base_url}
    path = resolve_data_path(data.path)
    info = {"source": "local", "path": str(path)}
    if not path.exists():
        raise DataError(f"{path}: data.path does not exist")
    if path.is_dir() and not formats.recognised(data.format, path):
        archives = sorted(p for p in path.iterdir() if is_archive(p))
        if archives:
            for archive in archives:
                extract(archive, tmp)
            return tmp, {**info, "archives": [a.name for a in archives]}
    return path, info


def _relative(path: str, tmp: Path) -> str:
    """Map a path read under the temporary folder to its final place under data/raw."""
    p = Path(path)
    try:
        return (RAW / p.relative_to(tmp)).as_posix()
    except ValueError:
        return str(p)


def ingest(data) -> dict:
    """Run the stage; returns the summary also written to reports/ingest.json."""
    with atomic_path(RAW, is_dir=True) as tmp:
        root, source = _stage_images(data, tmp)
        dataset = formats.read(data.format, root, data.crop_margin, tmp / "crops")
        df = dataset.table
        df["path"] = [_relative(p, tmp) for p in df["path"]]
        (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    write_csv(CLASSES, pd.DataFrame({"class_id": range(len(dataset.names)), "name": dataset.names}))
    write_csv(METADATA, df)
    metrics = {side: {**dataset.summary[side], "fingerprint": dataset.fingerprint[side]} for side in SIDES}
    metrics.update(source=source["source"], format=dataset.format, classes=len(dataset.names))
    write_json(INGEST_REPORT, metrics)
    return metrics


