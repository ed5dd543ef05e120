"""Reader of a manifest of frames: the crop manifest's CSV with several rows per frame.

    path,label,left,top,right,bottom[,subset]

One row per sign, boxes in pixel edges of the upright frame (right and bottom exclusive); a frame
with no sign is a row with the path only (label and box empty). `label` is a class id or name,
fixed by a `classes.csv` beside the manifest when there (`class_id,name[,category]`), as for the
crop manifest (tsloc.data.manifest); `subset` (train or test) gives the data set's own test side.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..data import manifest as crops
from ..data.frames import CATEGORIES, COLUMNS, NO_SIGN, SceneSet, check_frame_box, classes_table, side_summary
from ..data.images import image_size
from ..data.manifest import BOX, box_numbers, class_ids, open_manifest, read_table, sides_and_files
from ..data.table import files_digest, map_threads
from ..errors import DataError

SIDES = ("Training", "Testing")
locate = crops.locate  # found as the crop manifest is: a .csv file, or the folder's manifest.csv


def _categories(manifest: Path, count: int) -> list[str]:
    table = manifest.parent / "classes.csv"
    if table.is_file():
        df = read_table(table, ["class_id", "name"])
        if "category" in df.columns:
            df = df.assign(class_id=df["class_id"].astype(int)).sort_values("class_id")
            bad = ~df["category"].str.strip().isin(CATEGORIES)
            if bad.any():
                row = df[bad].iloc[0]
                raise DataError(f"{table}, line {row['line']}: category {row['category']!r} is not one of "
                                f"{', '.join(CATEGORIES)}")
            return df["category"].str.strip().tolist()
    return ["other"] * count


def read(path: Path) -> SceneSet:
    manifest, df = open_manifest(path, "manifest of frames")
    empty = (df["label"].str.strip() == "") & (df[BOX].apply(lambda c: c.str.strip()) == "").all(axis=1)
    signs = df[~empty].copy()
    signs = box_numbers(signs, manifest)
    names, ids = class_ids(manifest, signs["label"].str.strip(), signs["line"])
    signs["class_id"] = ids
    frames_only = df[empty].copy()
    frames_only["class_id"] = NO_SIGN
    for col in BOX:
        frames_only[col] = None
    df = pd.concat([signs, frames_only]).sort_values("line", kind="stable").reset_index(drop=True)
    df["side"], df["file"] = sides_and_files(df, manifest, "frame")
    sides = df.groupby("file")["side"].nunique()
    if (sides > 1).any():
        frame = sides[sides > 1].index[0]
        raise DataError(f"{manifest}: frame {frame} is listed with both subsets (a frame is on one side)")
    frames = list(dict.fromkeys(df["file"]))
    sizes = dict(zip(frames, map_threads(image_size, frames, desc="read frames")))
    records = []
    for r in df.itertuples(index=False):
        width, height = sizes[r.file]
        if r.class_id != NO_SIGN:
            check_frame_box(f"{manifest}, line {r.line}", (r.left, r.top, r.right, r.bottom), width, height)
        records.append((str(r.file), r.side, width, height, r.class_id, r.left, r.top, r.right, r.bottom, r.line))
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    boxed = set(table.loc[table["class_id"] != NO_SIGN, "frame"])
    table = table[(table["class_id"] != NO_SIGN) | ~table["frame"].isin(boxed)]  # an empty row beside boxes: no news
    table = table.drop_duplicates(subset=["frame", "class_id", *BOX]).reset_index(drop=True)
    base = manifest.parent
    extra = [manifest] + ([base / "classes.csv"] if (base / "classes.csv").is_file() else [])
    top = Path(os.path.commonpath([str(p.parent) for p in frames + extra]))
    side_of = dict(zip(df["file"], df["side"]))
    fingerprint = {s: files_digest(top, extra + [f for f in frames if side_of[f] == s]) for s in SIDES}
    summary = {s: side_summary(table, s) for s in SIDES}
    return SceneSet(table, classes_table(names, _categories(manifest, len(names))), summary, fingerprint, "manifest")
