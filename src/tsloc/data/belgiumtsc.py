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

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from ..errors import DataError
from ..io import sha256_file

SPLITS = ("Training", "Testing")
COLUMNS = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
INT_COLUMNS = COLUMNS[1:]
NAME_RE = re.compile(r"^(\d{5})_(\d{5})\.\w+$")
METADATA_COLUMNS = ["split", "class_id", "filename", "path", "width", "height",
                    "left", "top", "right", "bottom", "pole", "row_ids"]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, checking it is complete; PPM headers are parsed directly (fast)."""
    try:
        if path.suffix.lower() == ".ppm":
            return _ppm_size(path)
        with Image.open(path) as img:
            img.load()
            return img.size
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for a broken file
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def _ppm_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(512)
    fields, pos = [], 0
    while len(fields) < 4:
        while pos < len(head) and head[pos:pos + 1].isspace():
            pos += 1
        if head[pos:pos + 1] == b"#":
            pos = head.find(b"\n", pos) + 1 or len(head)
            continue
        start = pos
        while pos < len(head) and not head[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise DataError(f"{path}: unreadable image (incomplete PPM header)")
        fields.append(head[start:pos])
    if fields[0] != b"P6" or not all(x.isdigit() for x in fields[1:]):
        raise DataError(f"{path}: unreadable image (not a binary PPM: header {b' '.join(fields)!r})")
    width, height, maxval = (int(x) for x in fields[1:])
    if width == 0 or height == 0 or not 0 < maxval < 65536:
        raise DataError(f"{path}: unreadable image (bad PPM header {width}x{height}, maxval {maxval})")
    expected = pos + 1 + width * height * 3 * (1 if maxval < 256 else 2)
    actual = path.stat().st_size
    if actual < expected:
        raise DataError(f"{path}: truncated image ({actual} bytes, its header needs {expected})")
    return width, height


def read_gt(csv: Path, class_id: int) -> pd.DataFrame:
    """One GT file as integers, with `line` (the line number in the file, for error messages)."""
    try:
        df = pd.read_csv(csv, sep=";", dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise DataError(f"{csv}: malformed csv ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv}: unreadable ({exc})") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {missing}; expected {';'.join(COLUMNS)}")
    df = df[COLUMNS].copy()
    df["line"] = range(2, len(df) + 2)
    for col in INT_COLUMNS:
        values = df[col].str.strip()
        bad = ~values.str.fullmatch(r"\d+")
        if bad.any():
            row = df[bad].iloc[0]
            raise DataError(f"{csv}, line {row['line']}: {col} is {row[col]!r}, not a non-negative integer")
        df[col] = values.astype("int64")
    wrong = df["ClassId"] != class_id
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
    records = []
    df = df.rename(columns={"Roi.X1": "x1", "Roi.Y1": "y1", "Roi.X2": "x2", "Roi.Y2": "y2"})
    for r in df.itertuples(index=False):
        where = f"{r.csv}, line {r.line}"
        m = NAME_RE.match(r.Filename)
        if not m:
            raise DataError(f"{where}: file name {r.Filename!r} is not PPPPP_VVVVV.ext (pole_view)")
        path = Path(r.csv).parent / r.Filename
        if not path.is_file():
            raise DataError(f"{where}: image {path} not found")
        width, height = image_size(path)
        # The GT files swap the axes: Width/Height hold the image's height/width.
        gt_w, gt_h = r.Height, r.Width
        if (gt_w, gt_h) != (width, height):
            raise DataError(f"{where}: Width={r.Width};Height={r.Height} disagree with the image "
                            f"({width} px wide, {height} px tall; the GT convention is Width=height, Height=width)")
        left, top, right, bottom = r.y1, r.x1, r.y2, r.x2  # Roi.X* runs down the rows
        if not (0 <= left < right <= width and 0 <= top < bottom <= height):
            raise DataError(f"{where}: box (left {left}, top {top}, right {right}, bottom {bottom}) "
                            f"is not inside its {width}x{height} image")
        records.append((split, r.ClassId, r.Filename, str(path), width, height,
                        left, top, right, bottom, int(m.group(1)), r.row_ids))
    return pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)


def read_dataset(root: Path) -> tuple[pd.DataFrame, dict]:
    """Both official splits; row ids count rows (duplicates included) within each split, as the notebook does."""
    tables, summary = [], {}
    for split in SPLITS:
        df, summary[split] = read_split(Path(root), split)
        tables.append(df)
    return pd.concat(tables, ignore_index=True), summary



def folder_digest(root: Path, split: str) -> dict:
    """The digest of `root/split` as the shared README defines it ("Checking a download").

    Every file as `<sha256>  <path>` (path relative to `root`, forward slashes), sorted bytewise by
    path, a newline after each line, hashed with sha256. Doubles as ingest's fingerprint.
    """
    root = Path(root)
    files = sorted((p for p in (root / split).rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix().encode())
    with ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(sha256_file, files))
    text = "".join(f"{d}  {p.relative_to(root).as_posix()}\n" for d, p in zip(digests, files))
    return {"files": len(files), "digest": hashlib.sha256(text.encode()).hexdigest()}
