"""Reader of a manifest: anyone's own signs, as one CSV.

    path,label,left,top,right,bottom[,subset][,group]

- `path`: an image Pillow reads, relative to the manifest's folder (or absolute).
- `label`: a class id or a class name. An optional `classes.csv` (`class_id,name`) beside the
  manifest fixes the ids and names; without it, labels that are all integers are the ids (names
  "class N"), and otherwise the names sorted alphabetically get the ids 0, 1, ...
- `left, top, right, bottom`: the box in pixel edges of the upright image (EXIF orientation
  applied), right and bottom exclusive: a box over a whole W x H image is 0, 0, W, H. Numbers may
  have decimals.
- `subset` (optional): `train` or `test`. Without it the split stage carves the test set.
- `group` (optional): one physical sign; its images never straddle train, valid and test.
  Without it every image is its own sign.

With `crop_margin` > 0 the images are whole frames (as annotation tools export them): each box is
cut out of its frame with that margin (a share of the box's size per side, clipped to the frame)
into `crops/`, so that the model sees sign crops as in BelgiumTSC. Several boxes in one frame give
several crops; without `group` the crops of one frame form one group (they may overlap).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .images import image_size, open_rgb
from .table import COLUMNS as METADATA_COLUMNS, SIDES, Dataset, check_box, files_digest, map_threads, summary

NAME = "manifest.csv"
REQUIRED = ["path", "label", "left", "top", "right", "bottom"]
SUBSETS = {"train": "Training", "test": "Testing"}
BOX = ["left", "top", "right", "bottom"]


def locate(path: Path) -> Path | None:
    """The manifest: `path` itself when it is a .csv file, or `path/manifest.csv`."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    return path / NAME if (path / NAME).is_file() else None


def read_table(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed csv ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file (expected the header {','.join(required)})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {','.join(required)}")
    df["line"] = range(2, len(df) + 2)
    return df


def class_ids(manifest: Path, labels: pd.Series, lines: pd.Series) -> tuple[list[str], list[int]]:
    """(names, class id per row) from classes.csv or from the labels themselves."""
    table = manifest.parent / "classes.csv"
    if table.is_file():
        df = read_table(table, ["class_id", "name"])
        bad = ~df["class_id"].str.strip().str.fullmatch(r"\d+")
        if bad.any():
            row = df[bad].iloc[0]
            raise DataError(f"{table}, line {row['line']}: class_id is {row['class_id']!r}, not a non-negative integer")
        ids = df["class_id"].astype(int)
        if sorted(ids) != list(range(len(df))):
            raise DataError(f"{table}: class ids must be 0 .. {len(df) - 1}, each once (got {sorted(ids)[:10]}...)")
        names = df.set_index(ids)["name"].sort_index().str.strip().tolist()
        lookup = {n: i for i, n in enumerate(names)} | {str(i): i for i in range(len(names))}
        unknown = ~labels.isin(lookup)
        if unknown.any():
            i = unknown.to_numpy().argmax()
            raise DataError(f"{manifest}, line {lines.iloc[i]}: label {labels.iloc[i]!r} is neither a class id nor a "
                            f"class name in {table}")
        return names, [lookup[v] for v in labels]
    if len(labels) and labels.str.fullmatch(r"\d+").all():
        ids = labels.astype(int)
        return [f"class {i}" for i in range(ids.max() + 1)], ids.tolist()
    empty = labels == ""
    if empty.any():
        raise DataError(f"{manifest}, line {lines[empty].iloc[0]}: empty label")
    names = sorted(labels.unique())
    lookup = {n: i for i, n in enumerate(names)}
    return names, [lookup[v] for v in labels]


def box_numbers(df: pd.DataFrame, manifest: Path) -> pd.DataFrame:
    for col in BOX:
        values = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = values.isna()
        if bad.any():
            row = df[bad].iloc[0]
            raise DataError(f"{manifest}, line {row['line']}: {col} is {row[col]!r}, not a number")
        df[col] = values
    return df


def open_manifest(path: Path, what: str) -> tuple[Path, pd.DataFrame]:
    """The manifest at `path` (a .csv, or the folder's manifest.csv) and its rows, with the required
    columns and at least one row."""
    manifest = locate(path)
    if manifest is None:
        raise DataError(f"{path}: no {what} (a .csv file, or a folder holding {NAME})")
    df = read_table(manifest, REQUIRED)
    if not len(df):
        raise DataError(f"{manifest}: no rows")
    return manifest, df


def sides_and_files(df: pd.DataFrame, manifest: Path, what: str) -> tuple[list[str], list[Path]]:
    """Each row's side (Training, or Testing for `subset: test`) and its file (relative to the
    manifest's folder, or absolute), checked: one message naming the line when a subset is unknown,
    a path empty or a file missing."""
    if "subset" in df.columns:
        values = df["subset"].str.strip().str.lower()
        bad = ~values.isin(SUBSETS)
        if bad.any():
            row = df[bad].iloc[0]
            raise DataError(f"{manifest}, line {row['line']}: subset is {row['subset']!r}, not train or test")
        sides = values.map(SUBSETS).tolist()
    else:
        sides = ["Training"] * len(df)
    files = [Path(p) if os.path.isabs(p) else manifest.parent / p for p in df["path"].str.strip()]
    for line, path, file in zip(df["line"], df["path"], files):
        if not path.strip():
            raise DataError(f"{manifest}, line {line}: empty path")
        if not file.is_file():
            raise DataError(f"{manifest}, line {line}: {what} {file} not found")
    return sides, files


def crop_boxes(frame: Path, boxes: list[tuple], margin: float, out: Path, stem: str) -> list[tuple]:
    """Cut each box out of its frame with `margin` x its size per side (clipped to the frame); write
    PNGs; returns (file, width, height, box in the crop) per box."""
    img = open_rgb(frame)
    w, h = img.size
    results = []
    for k, (left, top, right, bottom) in enumerate(boxes):
        mx, my = margin * (right - left), margin * (bottom - top)
        x0, y0 = max(0, int(left - mx)), max(0, int(top - my))
        x1, y1 = min(w, int(-(-(right + mx) // 1))), min(h, int(-(-(bottom + my) // 1)))
        name = out / f"{stem}_{k}.png"
        img.crop((x0, y0, x1, y1)).save(name)
        results.append((name, x1 - x0, y1 - y0, (left - x0, top - y0, right - x0, bottom - y0)))
    return results


def read(path: Path, crop_margin: float = 0.0, crops: Path | None = None) -> Dataset:
    manifest, df = open_manifest(path, "manifest")
    has_subset, has_group = "subset" in df.columns, "group" in df.columns
    df = box_numbers(df, manifest)
    names, ids = class_ids(manifest, df["label"].str.strip(), df["line"])
    df["class_id"] = ids
    df["split"], df["file"] = sides_and_files(df, manifest, "image")
    base = manifest.parent
    rows = {s: int((df["split"] == s).sum()) for s in SIDES}
    key = ["path", "label", *BOX] + (["subset"] if has_subset else []) + (["group"] if has_group else [])
    duplicates = df.duplicated(subset=key).to_numpy()
    df_all_split = df["split"].to_numpy()
    df = df[~duplicates].reset_index(drop=True)
    if not crop_margin:
        clash = df["file"].duplicated()
        if clash.any():
            row = df[clash].iloc[0]
            raise DataError(f"{manifest}, line {row['line']}: {row['path']} is listed again with other values "
                            f"(several boxes in one image need data.crop_margin, which crops each box)")
    frames = list(dict.fromkeys(df["file"]))
    sizes = dict(zip(frames, map_threads(image_size, frames, desc="read manifest")))
    for r in df.itertuples(index=False):
        width, height = sizes[r.file]
        check_box(f"{manifest}, line {r.line}", (r.left, r.top, r.right, r.bottom), width, height)
    groups = (df["group"].str.strip() if has_group else pd.Series([""] * len(df)))
    own = [f"frame:{p}" if crop_margin else f"image:{p}" for p in df["path"].str.strip()]
    df["group"] = [g if g else o for g, o in zip(groups, own)]
    records = []
    if crop_margin:
        if crops is None:
            raise ValueError("crop_margin needs a folder for the crops")
        crops.mkdir(parents=True, exist_ok=True)
        by_frame = [(i, f, rows) for i, (f, rows) in enumerate(df.groupby("file", sort=False))]  # frames' order
        cut = map_threads(lambda job: crop_boxes(job[1], list(job[2][BOX].itertuples(index=False, name=None)),
                                            crop_margin, crops, f"{job[0]:06d}"), by_frame, desc="crop boxes")
        for (_, _, boxes), results in zip(by_frame, cut):
            for r, (file, w, h, box) in zip(boxes.itertuples(index=False), results):
                records.append((r.split, r.class_id, file.name, str(file), w, h, *box, r.group, str(r.line)))
    else:
        for r in df.itertuples(index=False):
            width, height = sizes[r.file]
            records.append((r.split, r.class_id, r.file.name, str(r.file), width, height,
                            r.left, r.top, r.right, r.bottom, r.group, str(r.line)))
    table = pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)
    sides = {s: sorted(set(df.loc[df["split"] == s, "file"])) for s in SIDES}
    extra = [manifest] + ([base / "classes.csv"] if (base / "classes.csv").is_file() else [])
    top = Path(os.path.commonpath([str(p.parent) for p in frames + extra]))
    fingerprint = {s: files_digest(top, extra + sides[s]) for s in SIDES}
    dropped = {s: int((duplicates & (df_all_split == s)).sum()) for s in SIDES}
    report = {s: summary(table, s, rows=rows[s], duplicate_rows_dropped=dropped[s]) for s in SIDES}
    return Dataset(table, names, report, fingerprint)
