"""The ingest stage: put the images where `data.source` says, read them once, write the metadata.

Every source ends in the official layout, read by the one reader (`belgiumtsc.read_dataset`):
- synthetic: generated into `data/raw/`;
- download: the official zips fetched into `data/downloads/` (kept for reuse), extracted into `data/raw/`;
- local: a folder with Training/ and Testing/ read in place (`data/raw/` then holds only SOURCE.json),
  or a folder with the archives, extracted into `data/raw/`.
Metadata paths are relative to the repository for images inside it (so that `dvc exp run --temp`
works on its own copy) and absolute for a folder read in place.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io import atomic_path, write_csv, write_json
from .belgiumtsc import SPLITS, folder_digest, read_dataset
from .download import extract, fetch_official, find_layout, is_archive
from .synthetic import generate

RAW = Path("data/raw")
DOWNLOADS = Path("data/downloads")
METADATA = Path("data/metadata.csv")
METRICS = Path("metrics/ingest.json")


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


def _stage_images(data, tmp: Path) -> tuple[Path, dict]:
    """Fill `tmp` (the future data/raw) and return the folder holding Training/ and Testing/."""
    if data.source == "synthetic":
        size, seed = data.synthetic.size, data.synthetic.seed
        generate(tmp, size=size, seed=seed)
        return tmp, {"source": "synthetic", "size": size, "seed": seed}
    if data.source == "download":
        base_url = data.base_url
        return fetch_official(base_url, DOWNLOADS, tmp), {"source": "download", "base_url": base_url}
    path = resolve_data_path(data.path)
    info = {"source": "local", "path": str(path)}
    if not path.is_dir():
        raise DataError(f"{path}: data.path is not a folder (give a folder with Training/ and Testing/, "
                        f"or with the official archives)")
    if all((path / s).is_dir() for s in SPLITS):
        return path, info
    archives = sorted(p for p in path.iterdir() if is_archive(p))
    if not archives:
        raise DataError(f"{path}: holds neither Training/ and Testing/ folders nor .zip/.tar.* archives")
    for archive in archives:
        extract(archive, tmp)
    return find_layout(tmp), {**info, "archives": [a.name for a in archives]}


def _relative(path: str, tmp: Path) -> str:
    """Map a path read under the temporary folder to its final place under data/raw."""
    p = Path(path)
    try:
        return (RAW / p.relative_to(tmp)).as_posix()
    except ValueError:
        return str(p)


def ingest(data) -> dict:
    """Run the stage; returns the summary also written to metrics/ingest.json."""
    with atomic_path(RAW, is_dir=True) as tmp:
        root, source = _stage_images(data, tmp)
        df, summary = read_dataset(root)
        fingerprint = {split: folder_digest(root, split) for split in SPLITS}
        df["path"] = [_relative(p, tmp) for p in df["path"]]
        (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    write_csv(METADATA, df)
    metrics = {split: {**summary[split], "fingerprint": fingerprint[split]} for split in SPLITS}
    metrics["source"] = source["source"]
    write_json(METRICS, metrics)
    return metrics


def load_metadata(path: Path = METADATA) -> pd.DataFrame:
    if not Path(path).exists():
        raise DataError(f"{path}: not found (run the ingest stage first: dvc repro ingest)")
    return pd.read_csv(path, dtype={"row_ids": str})
