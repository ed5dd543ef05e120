"""Reader of the German Traffic Sign Recognition Benchmark (GTSRB) as its three official archives
extract:

    GTSRB/Final_Training/Images/000NN/GT-000NN.csv + TTTTT_IIIII.ppm   43 classes, 00000..00042
    GTSRB/Final_Test/Images/NNNNN.ppm + GT-final_test.test.csv         (no ClassId column)
    GT-final_test.csv                                                  the test labels: beside GTSRB/
                                                                       (where its zip extracts) or moved
                                                                       next to the test images

The CSVs are semicolon-separated like BelgiumTSC's, but the axes are the right way round: `Width`
is the width and `Roi.X*` runs along it. Boxes are read as pixel edges, right and bottom exclusive
(the convention of `tsloc.data.table`); the release's border of 10% and at least 5 px around each
sign agrees with that reading. `TTTTT` is the track (one physical sign seen about 30 times as the
car approached): the group of the split. Test images carry no track, so each is its own group.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .belgiumtsc import read_gt
from .images import image_size
from .table import (COLUMNS as METADATA_COLUMNS, SIDES, Dataset, check_box, files_digest, map_threads, packaged_names,
                    summary)

NUM_CLASSES = 43
TRAIN_DIR = Path("Final_Training/Images")
TEST_DIR = Path("Final_Test/Images")
TEST_LABELS = "GT-final_test.csv"
ARCHIVES = ("GTSRB_Final_Training_Images.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip")
TRACK_RE = re.compile(r"^(\d{5})_(\d{5})\.\w+$")


def class_names() -> list[str]:
    return packaged_names("gtsrb")


def locate(folder: Path) -> Path | None:
    """The `GTSRB/` folder (the one holding Final_Training/Images): `folder` itself, `folder/GTSRB`
    or one level further down."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [folder, folder / "GTSRB"] + sorted(p / "GTSRB" for p in folder.iterdir() if p.is_dir())
    return next((c for c in candidates if (c / TRAIN_DIR).is_dir()), None)


def test_labels(gtsrb: Path, given: Path) -> Path:
    """GT-final_test.csv: beside GTSRB/, next to the test images, or in the folder the user gave."""
    places = [gtsrb.parent, gtsrb / TEST_DIR, Path(given)]
    for place in places:
        if (place / TEST_LABELS).is_file():
            return place / TEST_LABELS
    looked = ", ".join(dict.fromkeys(str(p) for p in places))
    raise DataError(f"{gtsrb / TEST_DIR}: the test set has no labels: {TEST_LABELS} (from GTSRB_Final_Test_GT.zip) "
                    f"not found (looked in {looked})")


def _rows(df: pd.DataFrame, folder: Path, csv: Path, side: str, group) -> list:
    """Check each listed image against its row; (metadata record) per row, in order."""
    for r in df.itertuples(index=False):
        if not (folder / r.Filename).is_file():
            raise DataError(f"{csv}, line {r.line}: image {folder / r.Filename} not found")
    clash = df["Filename"].duplicated()
    if clash.any():
        row = df[clash].iloc[0]
        raise DataError(f"{csv}, line {row['line']}: {row['Filename']} is listed twice")
    sizes = map_threads(lambda name: image_size(folder / name), df["Filename"], desc=f"read {side}")
    records = []
    for i, (r, (width, height)) in enumerate(zip(df.itertuples(index=False), sizes)):
        where = f"{csv}, line {r.line}"
        if (r.Width, r.Height) != (width, height):
            raise DataError(f"{where}: Width={r.Width};Height={r.Height} disagree with the image "
                            f"({width} px wide, {height} px tall)")
        box = (r[3], r[4], r[5], r[6])  # Roi.X1, Roi.Y1, Roi.X2, Roi.Y2: not swapped in GTSRB
        check_box(where, box, width, height)
        if not 0 <= r.ClassId < NUM_CLASSES:
            raise DataError(f"{where}: ClassId {r.ClassId} is not a GTSRB class (0..{NUM_CLASSES - 1})")
        records.append((side, r.ClassId, r.Filename, str(folder / r.Filename), width, height, *box,
                        group(r, where), str(i)))
    return records


def _track(r, where: str) -> int:
    m = TRACK_RE.match(r.Filename)
    if not m:
        raise DataError(f"{where}: file name {r.Filename!r} is not TTTTT_IIIII.ppm (track_view)")
    return int(m.group(1))


def read(folder: Path) -> Dataset:
    gtsrb = locate(folder)
    if gtsrb is None:
        raise DataError(f"{folder}: no GTSRB layout (GTSRB/{TRAIN_DIR.as_posix()}/000NN/, here or one folder down)")
    train_dir, test_dir = gtsrb / TRAIN_DIR, gtsrb / TEST_DIR
    class_dirs = sorted(p for p in train_dir.iterdir() if p.is_dir() and re.fullmatch(r"\d{5}", p.name))
    if not class_dirs:
        raise DataError(f"{train_dir}: no class folders (00000 .. 00042) found")
    records, used = [], {"Training": [], "Testing": []}
    for cdir in class_dirs:
        csv = cdir / f"GT-{cdir.name}.csv"
        if not csv.is_file():
            raise DataError(f"{csv}: GT csv file not found")
        df = read_gt(csv, int(cdir.name))
        records += _rows(df, cdir, csv, "Training", _track)
        used["Training"] += [csv] + [cdir / f for f in df["Filename"]]
    if test_dir.is_dir():
        labels = test_labels(gtsrb, folder)
        df = read_gt(labels, None)
        records += _rows(df, test_dir, labels, "Testing", lambda r, where: f"test-{Path(r.Filename).stem}")
        used["Testing"] += [labels] + [test_dir / f for f in df["Filename"]]
    # Without Final_Test (the training archive alone, as ../shared/data/gtsrb holds it), the split carves
    # a test set from the training tracks, whole tracks per class (split.test_fraction).
    table = pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)
    top = gtsrb.parent
    fingerprint = {}
    for side in SIDES:
        # The test labels may lie outside the folder: fingerprint them by name.
        inside = [p for p in used[side] if top in Path(p).parents]
        fingerprint[side] = files_digest(top, inside)
        if len(inside) < len(used[side]):
            fingerprint[side]["labels"] = files_digest(labels.parent, [labels])["digest"]
    return Dataset(table, class_names(), {s: summary(table, s) for s in SIDES}, fingerprint)

