"""Reader of the official BelgiumTSC layout: `Training/000NN/GT-000NN.csv` + `.ppm` (same for Testing).

The quirks of the real files, all handled here and nowhere else:
- exact duplicate rows (16 in Training, 14 in Testing) are dropped and counted;
- empty GT files (header only) would turn integer columns into `object`: every column is read as
  text and cast explicitly, with an error naming the file and line of any bad value;
- the GT files swap the axes: `Width` is the image's height, `Roi.X*` runs down the rows. The box is
  stored once, as (left, top, right, bottom) = (Roi.Y1, Roi.X1, Roi.Y2, Roi.X2), in pixel edges of the
  image as it really is (see `tsloc.boxes`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .images import image_size
from .table import (COLUMNS as METADATA_COLUMNS, SIDES as SPLITS, Dataset, check_box, files_digest, map_threads,
                    packaged_names)

COLUMNS = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
NAME_RE = re.compile(r"^(\d{5})_(\d{5})\.\w+$")
NUM_CLASSES = 62


def class_names() -> list[str]:
    """English names of the 62 classes (checked against the images; see data/classes/belgiumtsc.csv)."""
    return packaged_names("belgiumtsc")


def read_gt(csv: Path, class_id: int | None, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """One GT file as integers, with `line` (the line number in the file, for error messages).
    `class_id`, when given, must be every row's ClassId (the folder's class). GTSRB's files share
    this format (with the axes the right way round), so its reader uses this too."""
    try:
        df = pd.read_csv(csv, sep=";", dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise DataError(f"{csv}: malformed csv ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv}: unreadable ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {missing}; expected {';'.join(columns)}")
    df = df[columns].copy()
    df["line"] = range(2, len(df) + 2)
    for col in columns[1:]:
        values = df[col].str.strip()
        bad = ~values.str.fullmatch(r"\d+")
        if bad.any():
            row = df[bad].iloc[0]
            raise DataError(f"{csv}, line {row['line']}: {col} is {row[col]!r}, not a non-negative integer")
        df[col] = values.astype("int64")
    wrong = df["ClassId"] != class_id if class_id is not None else pd.Series(False, index=df.index)
    if wrong.any():
        row = df[wrong].iloc[0]
        raise DataError(f"{csv}, line {row['line']}: ClassId {row['ClassId']} disagrees with its folder "
                        f"{csv.parent.name} (class {class_id})")
    return df


def read_split(root: Path, split: str, first_row_id: int = 0) -> tuple[pd.DataFrame, dict]:
    """Read `root/split` into one row per unique image; returns the table and a summary."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected the official layout {split}/000NN/GT-000NN.csv)")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d{5}", p.name))
    if not class_dirs:
        raise DataError(f"{folder}: no class folders (00000, 00001, ...) found")
    tables, rows, dropped = [], 0, 0
    row_id = first_row_id
    for cdir in class_dirs:
        class_id = int(cdir.name)
        csv = cdir / f"GT-{cdir.name}.csv"
        if not csv.is_file():
            raise DataError(f"{csv}: GT csv file not found")
        df = read_gt(csv, class_id)
        df["row_id"] = range(row_id, row_id + len(df))
        row_id += len(df)
        rows += len(df)
        key = COLUMNS
        dup = df.duplicated(subset=key)
        dropped += int(dup.sum())
        # Keep every row id of an image's duplicates, so that the notebook's split can be replayed.
        ids = df.groupby(key, sort=False)["row_id"].agg(lambda s: " ".join(map(str, s)))
        df = df[~dup].copy()
        df["row_ids"] = ids.loc[pd.MultiIndex.from_frame(df[key])].to_numpy() if len(df) else []
        clash = df["Filename"].duplicated()
        if clash.any():
            row = df[clash].iloc[0]
            raise DataError(f"{csv}, line {row['line']}: {row['Filename']} is listed twice with different values")
        df["csv"] = str(csv)
        tables.append(df)
    df = pd.concat(tables, ignore_index=True)
    out = _to_metadata(df, folder, split)
    summary = {"rows": rows, "images": len(out), "duplicate_rows_dropped": dropped,
               "classes": int(out["class_id"].nunique()), "class_folders": len(class_dirs)}
    return out, summary


def _to_metadata(df: pd.DataFrame, folder: Path, split: str) -> pd.DataFrame:
    df = df.rename(columns={"Roi.X1": "x1", "Roi.Y1": "y1", "Roi.X2": "x2", "Roi.Y2": "y2"})
    rows = list(df.itertuples(index=False))
    for r in rows:
        if not NAME_RE.match(r.Filename):
            raise DataError(f"{r.csv}, line {r.line}: file name {r.Filename!r} is not PPPPP_VVVVV.ext (pole_view)")
        if not (Path(r.csv).parent / r.Filename).is_file():
            raise DataError(f"{r.csv}, line {r.line}: image {Path(r.csv).parent / r.Filename} not found")
    sizes = map_threads(lambda r: image_size(Path(r.csv).parent / r.Filename), rows, desc=f"read {split}")
    records = []
    for r, (width, height) in zip(rows, sizes):
        where = f"{r.csv}, line {r.line}"
        path = Path(r.csv).parent / r.Filename
        # The GT files swap the axes: Width/Height hold the image's height/width.
        gt_w, gt_h = r.Height, r.Width
        if (gt_w, gt_h) != (width, height):
            raise DataError(f"{where}: Width={r.Width};Height={r.Height} disagree with the image "
                            f"({width} px wide, {height} px tall; the GT convention is Width=height, Height=width)")
        box = (r.y1, r.x1, r.y2, r.x2)  # Roi.X* runs down the rows
        check_box(where, box, width, height)
        pole = int(NAME_RE.match(r.Filename).group(1))
        records.append((split, r.ClassId, r.Filename, str(path), width, height, *box, pole, r.row_ids))
    return pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)


def read_dataset(root: Path) -> tuple[pd.DataFrame, dict]:
    """Both official splits; row ids count rows (duplicates included) within each split, as the notebook does."""
    tables, summary = [], {}
    for split in SPLITS:
        df, summary[split] = read_split(Path(root), split)
        tables.append(df)
    return pd.concat(tables, ignore_index=True), summary


def folder_digest(root: Path, split: str) -> dict:
    """The digest of `root/split` as the shared README defines it ("Checking a download"): the
    fingerprint of every file under it (`table.files_digest`)."""
    root = Path(root)
    return files_digest(root, (p for p in (root / split).rglob("*") if p.is_file()))


def locate(folder: Path) -> Path | None:
    """The folder holding `Training/` and `Testing/`: `folder` itself or one of its subfolders."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for cand in [folder] + sorted(p for p in folder.iterdir() if p.is_dir()):
        if all((cand / s).is_dir() for s in SPLITS):
            return cand
    return None


def read(folder: Path) -> Dataset:
    root = locate(folder)
    if root is None:
        raise DataError(f"{folder}: no BelgiumTSC layout (Training/ and Testing/ with 000NN/GT-000NN.csv), "
                        f"here or one folder down")
    df, summary = read_dataset(root)
    return Dataset(df, class_names(), summary, {split: folder_digest(root, split) for split in SPLITS})
