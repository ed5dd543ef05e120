"""`tsloc detect`: find and name every sign in camera frames (files or folders of them): the
detector, then the crop model on each detection (tsloc.serving.find). One JSON line per frame:

    {"path", "width", "height", "detections": [{"box": [left, top, right, bottom], "score",
                                                "class_id", "class", "probability"}]}

boxes in pixels of the upright frame (EXIF applied), right and bottom exclusive, as `tsloc
predict`'s; or CSV, a row per detection (a frame without one: a row with its path and size).
Frames are decoded a few ahead in a thread while the previous one is searched: memory holds a
handful of frames whatever the folder's size.

A video (`detect_video`: any container FFmpeg reads, through PyAV) is one JSON line per frame with
its index and time; `--track` gives each detection a track id (ByteTrack) and `--inventory` writes
one row per physical sign (tsloc.serving.inventory); `--draw out.mp4` the video with its boxes.
"""
from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data.frames import ahead
from ..data.images import open_rgb
from ..errors import DataError
from ..params import TrackParams
from ..video import VideoWriter, probe, read_video
from .inventory import Inventory, SignTracker
from .predict import DrawNames, NoImages, collect

CSV_FIELDS = ["path", "width", "height", "left", "top", "right", "bottom", "score", "class_id", "class", "probability"]
VIDEO_CSV_FIELDS = CSV_FIELDS[:1] + ["frame", "time"] + CSV_FIELDS[1:] + ["track_id"]


def _decode(path: Path):
    try:
        return np.array(open_rgb(path))
    except DataError as exc:
        return exc


def frames(files: list[tuple[Path, Path]]):
    """(path, draw name, frame or DataError) in order, decoded a few frames ahead in a thread (`ahead`)."""
    return ahead((path, name, _decode(path)) for path, name in files)


def record(path: Path | None, frame: np.ndarray, found: list[dict], names: list[str], min_probability: float) -> dict:
    h, w = frame.shape[:2]
    return {"path": None if path is None else str(path), "width": int(w), "height": int(h), "detections": [
        {"box": [round(v, 1) for v in d["box"]], "score": round(d["score"], 4), "class_id": d["class_id"],
         "class": names[d["class_id"]], "probability": round(d["probability"], 4)}
        for d in found if d["probability"] >= min_probability]}


def annotate(frame: np.ndarray, rec: dict) -> Image.Image:
    """The frame with its detections' boxes and names (and track ids, when tracked)."""
    img = Image.fromarray(frame)
    d = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 300))
    for det in rec["detections"]:
        d.rectangle(det["box"], outline=(255, 0, 0), width=width)
        track = f"#{det['track_id']} " if det.get("track_id") is not None else ""
        label = f"{track}{det['class']} {100 * det['probability']:.0f}%"
        d.text((det["box"][0], max(0, det["box"][1] - 12)), label, fill=(255, 255, 0), stroke_width=1,
               stroke_fill=(0, 0, 0))
    return img


def draw(frame: np.ndarray, rec: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    annotate(frame, rec).save(out)


class RecordWriter:
    """Records to `out`: JSON lines, or CSV rows (one per detection; a frame without one: a row with
    its path and size)."""

    def __init__(self, out, fmt: str, fields: list[str]):
        self.out, self.writer = out, csv.DictWriter(out, fields) if fmt == "csv" else None
        if self.writer:
            self.writer.writeheader()

    def __call__(self, rec: dict) -> None:
        if self.writer is None:
            self.out.write(json.dumps(rec) + "\n")
            return
        base = {k: v for k, v in rec.items() if k != "detections"}
        for det in rec["detections"] or [{}]:
            box = dict(zip(("left", "top", "right", "bottom"), det["box"])) if det else {}
            self.writer.writerow(base | box | {k: v for k, v in det.items() if k != "box"})


def detect_files(finder, paths: list[str], *, min_score: float, min_probability: float, fmt: str = "jsonl",
                 draw_dir: str | None = None, out=None, err=None) -> int:
    """Find and name the signs of every frame with `finder` (tsloc.serving.find.Finder); unreadable
    files are named on `err` and skipped. Returns how many failed."""
    out, err = out or sys.stdout, err or sys.stderr
    files = collect(paths)
    if not files:
        raise NoImages(f"no image files in {', '.join(map(str, paths))}")
    names = finder.namer.meta["class_names"]
    emit = RecordWriter(out, fmt, CSV_FIELDS)
    drawn = DrawNames(draw_dir) if draw_dir else None
    failed = 0
    for path, name, frame in frames(files):
        if isinstance(frame, DataError):
            print(f"tsloc detect: error: {frame}", file=err)
            failed += 1
            continue
        rec = record(path, frame, finder(frame, min_score), names, min_probability)
        emit(rec)
        if drawn:
            draw(frame, rec, drawn(name))
    return failed


def detect_video(finder, path: str | Path, *, min_score: float, min_probability: float, every: int = 1,
                 track: TrackParams | None = None, inventory: str | Path | None = None, draw_to: str | Path | None = None,
                 gpx=None, emit=None, progress: bool = False) -> list[dict]:
    """Find and name the signs of every `every`-th frame of a video; `emit(record)` per frame (record: as
    `record`'s, with "frame" and "time", and a "track_id" per detection when tracked). Tracked, returns the
    inventory's rows (and writes them to `inventory`, a CSV, with the crops beside it; placed on the
    camera's GPX track `gpx` and also as GeoJSON, tsloc.serving.geo, where given); `draw_to`: the
    video with boxes and names. The files appear whole or not at all: a video that turns out damaged
    leaves none of them."""
    from tqdm import tqdm
    info = probe(path)
    names = finder.namer.meta["class_names"]
    rate = float(info.fps) / every
    tracker = SignTracker(track, rate) if track else None
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(VideoWriter(draw_to, rate)) if draw_to else None
        signs = stack.enter_context(Inventory(names, inventory, track, gpx)) if track else None
        total = -(-info.frames // every) if info.frames else None
        for frame in tqdm(ahead(read_video(path, every)), total=total, desc=Path(path).name, unit="frame",
                          disable=not progress, leave=False):
            rec = record(Path(path), frame.image, finder(frame.image, min_score), names, min_probability)
            rec = {"path": rec["path"], "frame": frame.index, "time": round(frame.time, 3)} | rec
            if tracker:
                for det, track_id in zip(rec["detections"], tracker(rec["detections"], frame.time)):
                    det["track_id"] = track_id
                signs.add(frame, rec["detections"])
            if video:
                video.write(np.asarray(annotate(frame.image, rec)))
            if emit:
                emit(rec)
    return signs.rows if signs else []
