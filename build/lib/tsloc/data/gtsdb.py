"""Reader of the German Traffic Sign Detection Benchmark (GTSDB) as `FullIJCNN2013.zip` extracts:

    FullIJCNN2013/00000.ppm ... 00899.ppm   frames, 1360 x 800
    FullIJCNN2013/gt.txt                    00001.ppm;983;388;1024;432;40  (file;leftCol;topRow;rightCol;bottomRow;ClassID)
    FullIJCNN2013/ReadMe.txt                the class list with each class's category
    FullIJCNN2013/00/ ... 42/               per-class sign sections (not needed, may be absent)

`gt.txt` has no header, one line per sign; its columns are pixel indices, inclusive (a box holds
`rightCol - leftCol + 1` columns): here `right = rightCol + 1`, `bottom = bottomRow + 1`, the
project's exclusive edges. Frames without a line are frames without a sign, and part of the data.
Class ids are GTSRB's (the same 43, with the names the GTSRB reader ships); the categories come
from `ReadMe.txt` (or, without it, from the same list shipped with the project). With the whole
package, frames 00600-00899 are the test side (the benchmark's protocol); with fewer (the training
part alone) every frame is Training and the split carves a test set.

`read_frames` reads the frames for the scene branch (`scenes.format: gtsdb`). `read` reads them
as a crop data set (`data.format: gtsdb`): each sign cut out of its frame with a margin of
`data.crop_margin` of its size per side (GTSRB's own crops carry about 10%, the default here when
`data.crop_margin` is 0), so that a user with annotated frames only trains the namer from them
too; the crops of one frame form one group (they may overlap).
"""
from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .frames import BOX, COLUMNS, NO_SIGN, SceneSet, check_frame_box, classes_table, side_summary
from .images import image_size
from .manifest import crop_boxes
from .table import COLUMNS as METADATA_COLUMNS, SIDES as CROP_SIDES, Dataset, files_digest, map_threads, summary

GT = "gt.txt"
README = "ReadMe.txt"
ARCHIVE = "FullIJCNN2013.zip"
FRAME = re.compile(r"^(\d{5})\.(ppm|jpe?g|png)$", re.IGNORECASE)
TEST_FROM = 600  # frames 00600-00899 are the benchmark's test part
SIDES = ("Training", "Testing")
CATEGORY_LINE = re.compile(r"^\s*(\d+)\s*=\s*(.*?)\s*\((prohibitory|danger|mandatory|other)\)\s*$", re.MULTILINE)


def locate(path: Path) -> Path | None:
    """The folder holding gt.txt and the frames: `path` itself or one folder down."""
    path = Path(path)
    if not path.is_dir():
        return None
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (folder / GT).is_file():
            return folder
    return None


def archive(path: Path) -> Path | None:
    """The package's zip: `path` itself, or FullIJCNN2013.zip inside the folder `path`."""
    path = Path(path)
    if path.is_file() and path.name.lower() == ARCHIVE.lower():
        return path
    return path / ARCHIVE if path.is_dir() and (path / ARCHIVE).is_file() else None


def names_and_categories(readme: Path | None) -> tuple[list[str], list[str]]:
    """GTSRB's 43 class names, and each class's category from ReadMe.txt (the shipped list without it)."""
    shipped = pd.read_csv(files("tsloc") / "data" / "classes" / "gtsrb.csv", keep_default_na=False)
    names, categories = shipped["name"].tolist(), shipped["category"].tolist()
    if readme is not None and readme.is_file():
        found = {int(m.group(1)): m.group(3) for m in CATEGORY_LINE.finditer(readme.read_text(errors="replace"))}
        if sorted(found) != list(range(len(names))):
            raise DataError(f"{readme}: expected the {len(names)} classes 0 = ... (category) to {len(names) - 1} = ..., "
                            f"found {len(found)}")
        categories = [found[i] for i in range(len(names))]
    return names, categories


def _parse(gt: Path, num_classes: int) -> list[tuple]:
    """(line, file name, left, top, right, bottom, class id) per line; one message per malformed line."""
    rows = []
    try:
        text = gt.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{gt}: unreadable ({exc})") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(";")]
        if len(fields) != 6:
            raise DataError(f"{gt}, line {number}: expected 6 fields file;leftCol;topRow;rightCol;bottomRow;ClassID, "
                            f"got {len(fields)}: {line.strip()!r}")
        name, *numbers = fields
        if not FRAME.match(name):
            raise DataError(f"{gt}, line {number}: {name!r} is not a frame name like 00001.ppm")
        if not all(re.fullmatch(r"\d+", n) for n in numbers):
            raise DataError(f"{gt}, line {number}: box and class must be non-negative integers, got {line.strip()!r}")
        left, top, right_col, bottom_row, class_id = map(int, numbers)
        if class_id >= num_classes:
            raise DataError(f"{gt}, line {number}: class {class_id} is not one of GTSDB's 0-{num_classes - 1}")
        rows.append((number, name, left, top, right_col + 1, bottom_row + 1, class_id))
    return rows


def read_frames(path: Path) -> SceneSet:
    root = locate(path)
    if root is None:
        raise DataError(f"{path}: no GTSDB package ({GT} and the frames NNNNN.ppm, here or one folder down)")
    gt = root / GT
    readme = root / README
    names, categories = names_and_categories(readme if readme.is_file() else None)
    lines = _parse(gt, len(names))
    frames = sorted(p for p in root.iterdir() if p.is_file() and FRAME.match(p.name))
    by_name = {p.name: p for p in frames}
    for number, name, *_ in lines:
        if name not in by_name:
            raise DataError(f"{gt}, line {number}: frame {root / name} not found")
    if not frames:
        raise DataError(f"{root}: no frames (NNNNN.ppm) beside {GT}")
    sizes = dict(zip(frames, map_threads(image_size, frames, desc="read GTSDB frames")))
    whole = any(int(FRAME.match(p.name).group(1)) >= TEST_FROM for p in frames)

    def side(p: Path) -> str:
        return "Testing" if whole and int(FRAME.match(p.name).group(1)) >= TEST_FROM else "Training"

    records, boxed = [], set()
    for number, name, left, top, right, bottom, class_id in lines:
        frame = by_name[name]
        width, height = sizes[frame]
        check_frame_box(f"{gt}, line {number}", (left, top, right, bottom), width, height)
        records.append((str(frame), side(frame), width, height, class_id, left, top, right, bottom, number))
        boxed.add(frame)
    for frame in frames:
        if frame not in boxed:
            width, height = sizes[frame]
            records.append((str(frame), side(frame), width, height, NO_SIGN, None, None, None, None, 0))
    table = pd.DataFrame.from_records(records, columns=COLUMNS).sort_values(["frame", "line"], kind="stable")
    table = table.reset_index(drop=True)
    extra = [gt] + ([readme] if readme.is_file() else [])
    fingerprint = {s: files_digest(root, extra + [f for f in frames if side(f) == s]) for s in SIDES}
    summary = {s: side_summary(table, s) for s in SIDES}
    return SceneSet(table, classes_table(names, categories), summary, fingerprint, "gtsdb")


GTSRB_MARGIN = 0.1  # GTSRB's crops: a border of about 10% of the sign on each side


def read(path: Path, crop_margin: float = 0.0, crops: Path | None = None) -> Dataset:
    scene = read_frames(path)
    boxes = scene.table[scene.table["class_id"] != NO_SIGN]
    if crops is None:
        raise ValueError("GTSDB crops need a folder to be written to")
    crops.mkdir(parents=True, exist_ok=True)
    margin = crop_margin or GTSRB_MARGIN
    jobs = [(i, Path(frame), rows) for i, (frame, rows) in enumerate(boxes.groupby("frame", sort=True))]
    cut = map_threads(lambda job: crop_boxes(job[1], list(job[2][BOX].itertuples(index=False, name=None)), margin,
                                             crops, f"{job[0]:06d}"), jobs, desc="crop GTSDB signs")
    records = []
    for (_, frame, rows), results in zip(jobs, cut):
        for r, (file, w, h, box) in zip(rows.itertuples(index=False), results):
            records.append((r.side, int(r.class_id), file.name, str(file), w, h, *box, f"frame:{frame.name}",
                            str(r.line)))
    table = pd.DataFrame.from_records(records, columns=METADATA_COLUMNS)
    report = {s: summary(table, s, frames=scene.summary[s]["frames"]) for s in CROP_SIDES}
    return Dataset(table, scene.classes["name"].tolist(), report, scene.fingerprint)
