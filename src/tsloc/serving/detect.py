"""`tsloc detect`: find and name every sign in camera frames (files or folders of them): the
detector, then the crop model on each detection (tsloc.serving.find). One JSON line per frame:

    {"path", "width", "height", "detections": [{"box": [left, top, right, bottom], "score",
                                                "class_id", "class", "probability"}]}

boxes in pixels of the upright frame (EXIF applied), right and bottom exclusive, as `tsloc
predict`'s; or CSV, a row per detection (a frame without one: a row with its path and size).
Frames are decoded a few ahead in a thread while the previous one is searched: memory holds a
handful of frames whatever the folder's size.
"""
from __future__ import annotations

import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data.images import open_rgb
from ..errors import DataError
from .predict import DrawNames, NoImages, collect

AHEAD = 2  # frames decoded ahead of the one being searched
CSV_FIELDS = ["path", "width", "height", "left", "top", "right", "bottom", "score", "class_id", "class", "probability"]


def _decode(path: Path):
    try:
        return np.array(open_rgb(path))
    except DataError as exc:
        return exc


def frames(files: list[tuple[Path, Path]]):
    """(path, draw name, frame or DataError) in order, decoded AHEAD frames ahead in a thread."""
    with ThreadPoolExecutor(1) as pool:
        pending = [pool.submit(_decode, f) for f, _ in files[:AHEAD + 1]]
        for k, (path, name) in enumerate(files):
            frame = pending.pop(0).result()
            if k + AHEAD + 1 < len(files):
                pending.append(pool.submit(_decode, files[k + AHEAD + 1][0]))
            yield path, name, frame


def record(path: Path | None, frame: np.ndarray, found: list[dict], names: list[str], min_probability: float) -> dict:
    h, w = frame.shape[:2]
    return {"path": None if path is None else str(path), "width": int(w), "height": int(h), "detections": [
        {"box": [round(v, 1) for v in d["box"]], "score": round(d["score"], 4), "class_id": d["class_id"],
         "class": names[d["class_id"]], "probability": round(d["probability"], 4)}
        for d in found if d["probability"] >= min_probability]}


def draw(frame: np.ndarray, rec: dict, out: Path) -> None:
    img = Image.fromarray(frame)
    d = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 300))
    for det in rec["detections"]:
        d.rectangle(det["box"], outline=(255, 0, 0), width=width)
        label = f"{det['class']} {100 * det['probability']:.0f}%"
        d.text((det["box"][0], max(0, det["box"][1] - 12)), label, fill=(255, 255, 0), stroke_width=1,
               stroke_fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def detect_files(finder, paths: list[str], *, min_score: float, min_probability: float, fmt: str = "jsonl",
                 draw_dir: str | None = None, out=None, err=None) -> int:
    """Find and name the signs of every frame with `finder` (tsloc.serving.find.Finder); unreadable
    files are named on `err` and skipped. Returns how many failed."""
    out, err = out or sys.stdout, err or sys.stderr
    files = collect(paths)
    if not files:
        raise NoImages(f"no image files in {', '.join(map(str, paths))}")
    names = finder.namer.meta["class_names"]
    writer = csv.DictWriter(out, CSV_FIELDS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    drawn = DrawNames(draw_dir) if draw_dir else None
    failed = 0
    for path, name, frame in frames(files):
        if isinstance(frame, DataError):
            print(f"tsloc detect: error: {frame}", file=err)
            failed += 1
            continue
        rec = record(path, frame, finder(frame, min_score), names, min_probability)
        if writer is None:
            out.write(json.dumps(rec) + "\n")
        else:
            base = {"path": rec["path"], "width": rec["width"], "height": rec["height"]}
            for det in rec["detections"] or [{}]:
                writer.writerow(base | (dict(zip(("left", "top", "right", "bottom"), det["box"])) | {
                    k: det[k] for k in ("score", "class_id", "class", "probability")} if det else {}))
        if drawn:
            draw(frame, rec, drawn(name))
    return failed
