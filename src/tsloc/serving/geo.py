"""Signs on a map: the camera's GPX track (read with gpxpy) places each inventory row where the camera
was at its best view's time, linear between the track's two points around it, and the placed rows
are written as GeoJSON points (RFC 7946: longitude first) for any map: QGIS, geojson.io, Leaflet.

The video's time 0 is the track's first point plus `offset` seconds (a dashcam's GPX usually starts
with its video: offset 0). A sign seen outside the track's times is not placed (no extrapolation)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path


@dataclass(frozen=True)
class GpxTrack:
    path: Path
    seconds: np.ndarray    # each point's time, seconds after the first point
    lat: np.ndarray
    lon: np.ndarray
    offset: float = 0.0    # the video's time 0, in the track's seconds

    def at(self, time: float) -> tuple[float, float] | None:
        """(latitude, longitude) at `time` seconds into the video, None outside the track."""
        t = time + self.offset
        if not self.seconds[0] <= t <= self.seconds[-1]:
            return None
        return float(np.interp(t, self.seconds, self.lat)), float(np.interp(t, self.seconds, self.lon))


def read_gpx(path: str | Path, offset: float = 0.0) -> GpxTrack:
    """The track points of a GPX file (every track and segment, in order); a file that is missing, not
    GPX, without track points, with points lacking a time or with times going back: DataError naming it."""
    try:
        import gpxpy
        import gpxpy.gpx
    except ImportError as exc:  # an install without the video extra
        raise DataError("GPX tracks need gpxpy: pip install 'tsloc[video]'") from exc
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: GPX file not found")
    try:
        with open(path, encoding="utf-8") as f:
            gpx = gpxpy.parse(f)
    except (gpxpy.gpx.GPXException, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a GPX file ({str(exc).splitlines()[0][:120]})") from None
    points = [p for t in gpx.tracks for s in t.segments for p in s.points]
    if not points:
        raise DataError(f"{path}: no track points (a GPX track, <trk><trkseg><trkpt>, is needed; routes and "
                        "waypoints carry no times)")
    untimed = [i for i, p in enumerate(points) if p.time is None]
    if untimed:
        raise DataError(f"{path}: {len(untimed)} of {len(points)} track points have no time (the first: point "
                        f"{untimed[0] + 1}); signs are placed by time")
    start = points[0].time
    seconds = np.array([(p.time - start).total_seconds() for p in points])
    back = np.flatnonzero(np.diff(seconds) < 0)
    if back.size:
        raise DataError(f"{path}: track point {back[0] + 2}'s time ({points[back[0] + 1].time}) is before the one "
                        "ahead of it; times must not go back")
    return GpxTrack(path, seconds, np.array([p.latitude for p in points]), np.array([p.longitude for p in points]),
                    offset)


def geojson(rows: list[dict]) -> dict:
    """The rows that have a place (lat, lon) as a FeatureCollection of points, their other fields as properties."""
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                 "properties": {k: v for k, v in r.items() if k not in ("lat", "lon")}}
                for r in rows if r.get("lat") is not None]
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(geojson(rows), indent=1) + "\n")
