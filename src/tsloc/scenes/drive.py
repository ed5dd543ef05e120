"""A synthetic dashcam drive, the video default that needs no data: a camera moving down a street
at a steady speed toward signs on poles beside it (the synthetic scenes' signs and classes), each
growing from 16 px as it comes into view to 70-130 px as it leaves the frame over 1 to 3 seconds;
with the true tracks (one id per physical sign, its box in every frame it is seen in) and the
camera's GPX track (a point a second, heading north from START).

A pinhole camera: a sign of side S metres, X metres beside the road and Y above it, d metres ahead,
is f·S/d pixels wide at f·X/d from the frame's centre. Deterministic in the seed.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..data.synthetic import NUM_CLASSES, draw_sign
from ..io import write_csv
from ..paths import DRIVE_CLASSES, DRIVE_GPX, DRIVE_TRUTH, DRIVE_VIDEO
from ..video import VideoWriter
from .synthetic import MIN_SIDE, scene_classes, street_background

TRACK_COLUMNS = ["frame", "time", "track_id", "class_id", "left", "top", "right", "bottom"]
CAMERA_HEIGHT = 1.4   # metres above the road
HORIZON = 0.42        # the vanishing point's height, a share of the frame's
VISIBLE = 0.5         # a sign is in the truth of a frame while this share of its box is inside it
START = (52.2650, 10.5210, datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc))  # the track's first point and time
METRES_PER_DEGREE = 111_320.0  # of latitude


def _signs(rng: np.random.Generator, count: int, seconds: float, speed: float, focal: float) -> pd.DataFrame:
    """Each sign's class, size, place beside the road and distance at time 0, spread over the drive so that
    each comes into view (MIN_SIDE px) at its own time, two on one side at least 0.8 s apart."""
    rows = []
    for _ in range(count * 20):
        if len(rows) == count:
            break
        side = 1 if rng.random() < 0.75 else -1  # most signs stand on the right
        t = rng.uniform(0, max(0.1, seconds - 2.0))
        if any(abs(t - r["appears"]) < 0.8 and r["side"] == side for r in rows):
            continue
        size = rng.uniform(0.6, 0.9)
        rows.append({"track_id": len(rows), "class_id": int(rng.integers(0, NUM_CLASSES)), "side": side,
                     "size": size, "x": side * rng.uniform(2.2, 3.8), "y": rng.uniform(1.9, 2.6),
                     "appears": t, "z": focal * size / MIN_SIDE + speed * t, "tint": rng.uniform(0.8, 1.15, 3)})
    return pd.DataFrame(rows)


def _lane_marks(draw: ImageDraw.ImageDraw, travelled: float, focal: float, width: int, horizon: float) -> None:
    """The centre line's dashes, 3 m long every 9 m, sliding toward the camera as it moves."""
    for k in range(1, 12):
        near, far = 9 * k - travelled % 9, 9 * k - travelled % 9 + 3
        if near < 1.5:
            continue
        y0, y1 = horizon + focal * CAMERA_HEIGHT / far, horizon + focal * CAMERA_HEIGHT / near
        draw.line([(width / 2, y0), (width / 2, y1)], fill=(230, 230, 220), width=max(1, int(focal * 0.15 / near)))


def render(signs: pd.DataFrame, t: float, background: Image.Image, speed: float, focal: float,
           rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, tuple[float, float, float, float]]]]:
    """The frame at time `t` and its true signs: (image, [(track id, class id, box), ...])."""
    frame = background.copy()
    width, height = frame.size
    horizon = HORIZON * height
    draw = ImageDraw.Draw(frame)
    _lane_marks(draw, speed * t, focal, width, horizon)
    truth = []
    for s in signs.sort_values("z", ascending=False).itertuples():  # the far ones first: the near ones cover them
        d = s.z - speed * t
        if d <= 0.5:
            continue
        side = focal * s.size / d
        if side < MIN_SIDE:
            continue
        cx, cy = width / 2 + focal * s.x / d, horizon - focal * (s.y - CAMERA_HEIGHT) / d
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        if box[2] < 0 or box[0] > width:
            continue
        ground = horizon + focal * CAMERA_HEIGHT / d
        draw.line([(cx, box[3]), (cx, ground)], fill=(120, 120, 125), width=max(1, int(focal * 0.06 / d)))
        left, top, k = int(np.floor(box[0])), int(np.floor(box[1])), 4  # drawn at 4x and scaled down: smooth edges
        w, h = int(np.ceil(box[2])) - left, int(np.ceil(box[3])) - top
        patch = Image.new("RGBA", (w * k, h * k), (0, 0, 0, 0))
        draw_sign(ImageDraw.Draw(patch), s.class_id, (0, 0, w * k - 1, h * k - 1), s.tint)
        small = patch.resize((w, h), Image.BOX)
        frame.paste(small, (left, top), small)
        clipped = (max(0, left), max(0, top), min(width, left + w), min(height, top + h))
        inside = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / (w * h)
        if inside >= VISIBLE:
            truth.append((int(s.track_id), int(s.class_id), clipped))
    arr = np.asarray(frame, np.float32) + rng.normal(0, 2.5, (height, width, 3)).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8), truth


def generate(out: Path, seconds: float = 10.0, fps: int = 15, signs: int = 8, seed: int = 0, width: int = 800,
             height: int = 480, speed: float = 14.0) -> tuple[Path, Path]:
    """Write the drive's video, its true tracks and the classes into `out` (named as tsloc.paths.DRIVE_*
    name them); returns (video, tracks)."""
    out = Path(out)
    rng = np.random.default_rng([seed, 1])
    focal = float(width)
    background = street_background(rng, width, height)
    table = _signs(rng, signs, seconds, speed, focal)
    rows = []
    with VideoWriter(out / DRIVE_VIDEO.name, fps, quality=18) as video:
        for i in tqdm(range(int(round(seconds * fps))), desc="synthetic drive", unit="frame", leave=False):
            t = i / fps
            image, truth = render(table, t, background, speed, focal, rng)
            video.write(image)
            rows += [{"frame": i, "time": round(t, 4), "track_id": tid, "class_id": c, "left": b[0], "top": b[1],
                      "right": b[2], "bottom": b[3]} for tid, c, b in truth]
    write_csv(out / DRIVE_TRUTH.name, pd.DataFrame(rows, columns=TRACK_COLUMNS))
    _gpx(out / DRIVE_GPX.name, seconds, speed)
    write_csv(out / DRIVE_CLASSES.name, scene_classes())
    return out / DRIVE_VIDEO.name, out / DRIVE_TRUTH.name


def _gpx(path: Path, seconds: float, speed: float) -> None:
    """The camera's track as GPX 1.1: due north from START at `speed`, a point a second (one past the end)."""
    import gpxpy.gpx
    gpx = gpxpy.gpx.GPX()
    segment = gpxpy.gpx.GPXTrackSegment()
    lat, lon, start = START
    for t in range(int(np.ceil(seconds)) + 1):
        segment.points.append(gpxpy.gpx.GPXTrackPoint(round(lat + speed * t / METRES_PER_DEGREE, 7), lon,
                                                      time=start + timedelta(seconds=t)))
    gpx.tracks.append(gpxpy.gpx.GPXTrack(name="synthetic drive"))
    gpx.tracks[0].segments.append(segment)
    path.write_text(gpx.to_xml(version="1.1"))
