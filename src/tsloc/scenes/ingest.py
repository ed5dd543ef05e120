"""The scenes_ingest stage's work: put the frames where `scenes.source` says, read them in their
format (`scenes.format`: auto, gtsdb or manifest) into the scene table and the class list.

- synthetic: street scenes generated into `data/scenes/raw/` (tsloc.scenes.synthetic);
- local: `scenes.path` read in place when it holds a GTSDB package or a manifest of frames; the
  package's zip (`FullIJCNN2013.zip`, given itself or in the folder) is extracted into
  `data/scenes/raw/` first.
Frame paths are relative to the repository for frames inside it and absolute for a folder read in
place, as for the crops (tsloc.data.ingest).
"""
from __future__ import annotations

from pathlib import Path

from ..data import gtsdb
from ..data.archives import extract
from ..data.frames import SceneSet
from ..errors import DataError
from ..io import atomic_path, write_csv, write_json
from ..paths import SCENE_CLASSES, SCENE_TABLE, SCENES_INGEST_REPORT, SCENES_RAW, resolve_data_path
from . import manifest, synthetic

READERS = {"gtsdb": (gtsdb.locate, gtsdb.read_frames), "manifest": (manifest.locate, manifest.read)}  # auto: in this order
LOOKED_FOR = (f"GTSDB: {gtsdb.GT} and frames NNNNN.ppm (here or one folder down) or {gtsdb.ARCHIVE}; "
              "a manifest of frames: a .csv file, or manifest.csv in the folder")


def detect(path: Path) -> str:
    for name, (locate, _) in READERS.items():
        if locate(path) is not None:
            return name
    raise DataError(f"{path}: no scene data set recognised (looked for {LOOKED_FOR})")


def read(fmt: str, path: Path) -> SceneSet:
    """The scene data set at `path` in format `fmt` (auto: recognised)."""
    fmt = detect(path) if fmt == "auto" else fmt
    data = READERS[fmt][1](path)
    data.format = fmt
    return data


def _stage_frames(scenes, tmp: Path) -> tuple[Path, dict]:
    """Fill `tmp` (the future data/scenes/raw) when frames are generated or extracted; return where the
    data set is and how it got there."""
    if scenes.source == "synthetic":
        s = scenes.synthetic
        synthetic.generate(tmp, frames=s.frames, seed=s.seed, width=s.width, height=s.height, fmt=s.format)
        return tmp, {"source": "synthetic", "format": s.format, "frames": s.frames, "seed": s.seed,
                     "size": [s.width, s.height]}
    path = resolve_data_path(scenes.path)
    info = {"source": "local", "path": str(path)}
    if not path.exists():
        raise DataError(f"{path}: scenes.path does not exist")
    zipped = gtsdb.archive(path)
    if zipped is not None and (path.is_file() or gtsdb.locate(path) is None):
        extract(zipped, tmp)
        return tmp, {**info, "archives": [zipped.name]}
    return path, info


def _relative(path: str, tmp: Path) -> str:
    try:
        return (SCENES_RAW / Path(path).relative_to(tmp)).as_posix()
    except ValueError:
        return str(path)


def ingest(scenes) -> dict:
    """Run the stage; returns the summary also written to reports/scenes_ingest.json."""
    with atomic_path(SCENES_RAW, is_dir=True) as tmp:
        root, source = _stage_frames(scenes, tmp)
        data = read(scenes.format, root)
        table = data.table
        table["frame"] = [_relative(p, tmp) for p in table["frame"]]
    write_csv(SCENE_CLASSES, data.classes)
    write_csv(SCENE_TABLE, table)
    report = {side: {**data.summary[side], "fingerprint": data.fingerprint[side]} for side in data.summary}
    report.update(source=source, format=data.format, classes=int(len(data.classes)))
    write_json(SCENES_INGEST_REPORT, report)
    return report
