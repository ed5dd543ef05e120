"""Signs over a video: each detection given a track id by ByteTrack (Roboflow's `trackers`), and the
tracks made into an inventory, one row per physical sign.

A sign's class is the vote of its views, each weighted by its detector score times its namer
probability; the row's confidence is the winning class's share of the votes, its best view the
view of that class with the largest weight (frame, time, box, and its crop saved beside the CSV).
A track is written out (its crop to disk, its arrays dropped) once it has been unseen for twice
the tracker's patience, so memory stays flat however long the video.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..io import atomic_path
from ..params import TrackParams
from .geo import write_geojson
from .namer import crop_windows

INVENTORY_FIELDS = ["track_id", "class_id", "class", "confidence", "views", "first_frame", "last_frame", "first_time",
                    "last_time", "best_frame", "best_time", "left", "top", "right", "bottom", "score", "probability",
                    "crop"]
CROP_MARGIN = 0.15  # of the box's size per side, in the saved crop


class SignTracker:
    """`tracker(detections, time)`: the track id of each detection (None: not yet confirmed)."""

    def __init__(self, settings: TrackParams, frame_rate: float):
        try:
            from trackers import ByteTrackTracker
        except ImportError as exc:  # an install without the video extra
            raise DataError("tracking needs Roboflow's trackers: pip install 'tsloc[video]'") from exc
        self.tracker = ByteTrackTracker(
            lost_track_buffer=max(1, round(settings.lost_seconds * 30)), frame_rate=frame_rate,
            track_activation_threshold=settings.new_score, minimum_consecutive_frames=settings.min_frames,
            minimum_iou_threshold=settings.min_iou, high_conf_det_threshold=settings.high_score)

    def __call__(self, detections: list[dict], time: float) -> list[int | None]:
        import supervision as sv
        boxes = np.array([d["box"] for d in detections], np.float32).reshape(-1, 4)
        found = sv.Detections(xyxy=boxes, confidence=np.array([d["score"] for d in detections], np.float32),
                              data={"index": np.arange(len(detections))})
        tracked = self.tracker.update(found, timestamp=time)  # a frame without detections ages the tracks too
        ids: list[int | None] = [None] * len(detections)
        if not len(tracked):
            return ids
        for index, track_id in zip(tracked.data["index"], tracked.tracker_id):
            if track_id >= 0:
                ids[int(index)] = int(track_id)
        return ids


@dataclass
class _Track:
    votes: np.ndarray
    first_frame: int
    first_time: float
    last_frame: int = 0
    last_time: float = 0.0
    views: int = 0
    best: dict = field(default_factory=dict)  # class id -> (weight, view dict, crop)


class Inventory:
    """Collects tracked detections frame by frame; `close()` returns the rows and writes `csv_path`
    and its crops (`<csv stem>/track_N.jpg`), all whole or not at all (inside a `with` block). Given
    the camera's GPX track (`gpx`, tsloc.serving.geo), each row has the place of its best view (lat,
    lon) and the placed rows are also written as GeoJSON (`<csv stem>.geojson`)."""

    def __init__(self, names: list[str], csv_path: str | Path | None, settings: TrackParams, gpx=None):
        self.names, self.settings, self.gpx = names, settings, gpx
        self.csv_path = Path(csv_path) if csv_path else None
        self.tracks: dict[int, _Track] = {}
        self.rows: list[dict] = []
        self.retire_after = 2 * settings.lost_seconds

    def __enter__(self):
        if self.csv_path:
            self._crops = atomic_path(self.csv_path.with_suffix(""), is_dir=True)
            self.crop_dir = self._crops.__enter__()
        return self

    def add(self, frame, detections: list[dict]) -> None:
        """One frame's named detections (each with its "track_id"; None ones are left out)."""
        for d in detections:
            if d.get("track_id") is None:
                continue
            t = self.tracks.get(d["track_id"])
            if t is None:
                t = self.tracks[d["track_id"]] = _Track(np.zeros(len(self.names)), frame.index, frame.time)
            weight = d["score"] * d["probability"]
            t.votes[d["class_id"]] += weight
            t.views += 1
            t.last_frame, t.last_time = frame.index, frame.time
            if weight > t.best.get(d["class_id"], (-1.0,))[0]:
                t.best[d["class_id"]] = (weight, {"frame": frame.index, "time": frame.time, **d},
                                         self._crop(frame.image, d["box"]) if self.csv_path else None)
        for track_id in [k for k, t in self.tracks.items() if frame.time - t.last_time > self.retire_after]:
            self._retire(track_id)

    def _crop(self, image: np.ndarray, box) -> np.ndarray:
        h, w = image.shape[:2]
        left, top, right, bottom = crop_windows(np.array([box]), w, h, CROP_MARGIN)[0]
        return image[top:bottom, left:right].copy()

    def _retire(self, track_id: int) -> None:
        t = self.tracks.pop(track_id)
        if t.views < self.settings.min_views:
            return
        c = int(np.argmax(t.votes))
        _, view, crop = t.best[c]
        row = {"track_id": track_id, "class_id": c, "class": self.names[c],
               "confidence": round(float(t.votes[c] / t.votes.sum()), 4), "views": t.views,
               "first_frame": t.first_frame, "last_frame": t.last_frame, "first_time": round(t.first_time, 3),
               "last_time": round(t.last_time, 3), "best_frame": view["frame"], "best_time": round(view["time"], 3),
               **dict(zip(("left", "top", "right", "bottom"), (round(v, 1) for v in view["box"]))),
               "score": round(view["score"], 4), "probability": round(view["probability"], 4), "crop": ""}
        if self.gpx:
            row["lat"], row["lon"] = self.gpx.at(view["time"]) or (None, None)
        if crop is not None:
            name = f"track_{track_id:05d}.jpg"
            Image.fromarray(crop).save(self.crop_dir / name, quality=92)
            row["crop"] = f"{self.csv_path.stem}/{name}"
        self.rows.append(row)

    def __exit__(self, kind, exc, tb):
        if kind is None:
            for track_id in list(self.tracks):
                self._retire(track_id)
            self.rows.sort(key=lambda r: (r["first_frame"], r["track_id"]))
        if not self.csv_path:
            return False
        if kind is not None:
            return self._crops.__exit__(kind, exc, tb)  # the crops written so far are removed
        self._crops.__exit__(None, None, None)  # the crops in place, then the map and the table that names them
        placed = self.csv_path.with_suffix(".geojson")
        try:
            if self.gpx:
                write_geojson(placed, self.rows)
            with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, INVENTORY_FIELDS + (["lat", "lon"] if self.gpx else []))
                writer.writeheader()
                writer.writerows(self.rows)
        except BaseException:
            shutil.rmtree(self.csv_path.with_suffix(""), ignore_errors=True)
            if self.gpx:
                placed.unlink(missing_ok=True)
            raise
        return False
