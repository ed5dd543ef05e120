"""The metadata table that every reader produces and everything after ingest reads.

One row per unique image: `split` (the side it came from: Training or Testing; a data set without
a test side has only Training, and the split stage carves a test set from it), `class_id`
(0..K-1, an index into the data set's class list), `filename`, `path`, `width` and `height` of the
upright image, the box `left, top, right, bottom` in pixel edges of that image (right and bottom
exclusive: a box over a whole W x H image is 0, 0, W, H), `group` (the physical sign: BelgiumTSC's
pole, GTSRB's track, a manifest's `group`; images of one group never straddle train, valid and
test) and `row_ids` (the annotation rows behind the image, for replaying the notebook's split).
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io import sha256_file
from ..paths import CLASSES, METADATA

SIDES = ("Training", "Testing")
DTYPES = {"row_ids": str, "group": str}  # how metadata.csv and split.csv are read back
COLUMNS = ["split", "class_id", "filename", "path", "width", "height", "left", "top", "right", "bottom",
           "group", "row_ids"]


def check_box(where: str, box, width: int, height: int) -> None:
    """A box must lie inside its image and have an area: one message naming the file and row if not."""
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise DataError(f"{where}: box (left {left}, top {top}, right {right}, bottom {bottom}) "
                        f"is not inside its {width}x{height} image")


def read_names(path) -> list[str]:
    """Class names from a `class_id,name` table, index = class id: the names shipped for BelgiumTSC and
    GTSRB, and data/classes.csv that ingest writes."""
    table = pd.read_csv(path, keep_default_na=False)
    return table.sort_values("class_id")["name"].astype(str).tolist()


def packaged_names(fmt: str) -> list[str]:
    """The class names shipped with the project for a format (src/tsloc/data/classes/<fmt>.csv)."""
    from importlib.resources import files
    return read_names(files("tsloc") / "data" / "classes" / f"{fmt}.csv")


def summary(df: pd.DataFrame, side: str, **extra) -> dict:
    """What ingest reports of one side: images, classes and whatever the reader adds (rows, duplicates)."""
    part = df[df["split"] == side]
    return {"images": int(len(part)), "classes": int(part["class_id"].nunique()), **extra}


def files_digest(root: Path, files) -> dict:
    """Every file as `<sha256>  <path>` (path relative to `root`, forward slashes), sorted bytewise by
    path, a newline after each line, hashed with sha256: the fingerprint of what ingest read."""
    root = Path(root)
    files = sorted(files, key=lambda p: Path(p).relative_to(root).as_posix().encode())
    with ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(sha256_file, files))
    text = "".join(f"{d}  {Path(p).relative_to(root).as_posix()}\n" for d, p in zip(digests, files))
    return {"files": len(files), "digest": hashlib.sha256(text.encode()).hexdigest()}


def check_test_classes(df: pd.DataFrame, names: list[str], where=lambda row: row["path"]) -> None:
    """A class in the test side that training never saw cannot be learnt: refused, named, with its file."""
    seen = set(df.loc[df["split"] == "Training", "class_id"])
    unseen = df[(df["split"] == "Testing") & ~df["class_id"].isin(seen)]
    if len(unseen):
        row = unseen.iloc[0]
        c = int(row["class_id"])
        raise DataError(f"{where(row)}: class {c} ({names[c]}) is in the test set but has no training image "
                        f"({unseen['class_id'].nunique()} such class(es), {len(unseen)} image(s))")


def map_threads(fn, items, desc: str | None = None, threads: int = 8) -> list:
    """`fn` over `items` in threads (Pillow and file reads release the GIL), in order, with progress."""
    from tqdm import tqdm
    items = list(items)
    with ThreadPoolExecutor(threads) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="img", leave=False,
                         disable=desc is None))


@dataclass
class Dataset:
    """What a reader returns: the metadata table, the class names (index = class id), a summary and
    a fingerprint (`files_digest`) per side."""
    table: pd.DataFrame
    names: list[str]
    summary: dict
    fingerprint: dict
    format: str = ""




def load_metadata(path: Path = METADATA) -> pd.DataFrame:
    if not Path(path).exists():
        raise DataError(f"{path}: not found (run the ingest stage first: dvc repro ingest)")
    return pd.read_csv(path, dtype=DTYPES)


def load_classes(path: Path = CLASSES) -> list[str]:
    """The data set's class names, index = class id (written by ingest from the data set itself)."""
    if not Path(path).exists():
        raise DataError(f"{path}: not found (run the ingest stage first: dvc repro ingest)")
    return read_names(path)
