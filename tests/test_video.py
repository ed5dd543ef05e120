"""Video: PyAV reading and writing, bad video files, the synthetic drive, tracking and the inventory,
their metrics, and `tsloc detect VIDEO` as a user runs it."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, stub_model
from tsloc.errors import DataError
from tsloc.params import TrackParams
from tsloc.scenes import drive
from tsloc.scenes.tracking import score_inventory, score_tracks
from tsloc.data.frames import ahead
from tsloc.serving.detect import detect_video
from tsloc.serving.find import Finder
from tsloc.serving.geo import read_gpx
from tsloc.serving.inventory import Inventory
from tsloc.video import Frame, VideoWriter, probe, read_video

BOX = ["left", "top", "right", "bottom"]


@pytest.fixture(scope="module")
def small_drive(tmp_path_factory):
    """A 4-second drive at 20 frames/s, 640 x 384, three signs: (video, true tracks)."""
    out = tmp_path_factory.mktemp("drive")
    video, tracks = drive.generate(out, seconds=4, fps=20, signs=3, seed=1, width=640, height=384)
    return video, pd.read_csv(tracks)


def _write(path, frames=12, size=(48, 64), fps=10):
    with VideoWriter(path, fps) as video:
        for i in range(frames):
            video.write(np.full((*size, 3), 7 * i % 256, np.uint8))
    return path


def test_the_drive_has_true_tracks_that_grow_as_the_camera_nears(small_drive):
    video, truth = small_drive
    info = probe(video)
    assert (info.width, info.height, info.fps, info.frames) == (640, 384, 20, 80)
    assert truth["track_id"].nunique() == 3
    for _, track in truth.groupby("track_id"):
        sides = (track["right"] - track["left"]).to_numpy()
        assert len(track) >= 3 and sides[0] >= 16 * 0.5 and sides.max() > sides[0]  # each grows from about 16 px
        assert np.all(np.diff(track["frame"]) >= 1)
    assert (truth[BOX] >= 0).all().all() and (truth["right"] <= 640).all() and (truth["bottom"] <= 384).all()
    again = drive.generate(video.parent.parent / "again", seconds=4, fps=20, signs=3, seed=1, width=640, height=384)
    assert pd.read_csv(again[1]).equals(truth)  # deterministic in the seed


def test_frames_come_with_their_index_and_time_and_every_nth_is_kept(tmp_path):
    path = _write(tmp_path / "v.mp4")
    frames = list(read_video(path))
    assert [f.index for f in frames] == list(range(12))
    assert np.allclose([f.time for f in frames], np.arange(12) / 10)
    assert frames[5].image.shape == (48, 64, 3) and abs(int(frames[5].image.mean()) - 35) <= 2
    assert [f.index for f in read_video(path, every=5)] == [0, 5, 10]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_a_video_cut_short_is_an_error_naming_it(tmp_path, suffix):
    data = _write(tmp_path / f"v{suffix}", frames=30).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[:int(len(data) * 0.8)])
    with pytest.raises(DataError, match=f"cut{suffix}: .*(cut short|not a video FFmpeg can read|no frames)"):
        list(read_video(cut))


def test_bad_video_files_are_one_line_each(tmp_path):
    import av
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    (tmp_path / "folder.mp4").mkdir()
    with av.open(str(tmp_path / "none.mkv"), "w") as container:  # a video stream without a frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    for name, message in (("missing.mp4", "no such file"), ("empty.mp4", "empty file"), ("folder.mp4", "a folder"),
                          ("text.mp4", "not a video FFmpeg can read"), ("none.mkv", "no frames")):
        with pytest.raises(DataError, match=f"{name}: {message}"):
            list(read_video(tmp_path / name))


def test_a_video_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 10) as video:
            video.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
    _write(out, frames=3, size=(47, 63))  # odd sides: cropped to even ones for yuv420p
    assert probe(out)[:2] == (62, 46) and len(list(read_video(out))) == 3


def test_ahead_keeps_the_order_and_raises_the_producers_error_in_its_place():
    def items():
        yield from range(5)
        raise DataError("broken after 5")
    got = []
    with pytest.raises(DataError, match="broken after 5"):
        for item in ahead(items(), 2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    for item in ahead(iter(range(1000)), 2):  # a consumer that stops early does not hang the producer
        if item == 3:
            break


class Oracle:
    """A detector and a namer that answer the truth of each frame searched (frames come in order,
    every `every`-th): the plumbing from decoding to the inventory, without a trained model."""

    def __init__(self, truth: pd.DataFrame, every: int = 1, class_names=None):
        self.by_frame = dict(list(truth.groupby("frame")))
        self.every, self.calls, self.classes = every, 0, []
        names = class_names or [f"class {i}" for i in range(62)]
        self.namer = self.Namer(self, {"class_names": names, "image_size": 32, "crop_margin": 0.0})

    def detector(self, frame, min_score=0.0, vote_iou=0.0):
        part = self.by_frame.get(self.calls * self.every, pd.DataFrame(columns=[*BOX, "class_id"]))
        self.calls += 1
        self.classes = part["class_id"].astype(int).tolist()
        return part[BOX].to_numpy(np.float32).reshape(-1, 4), np.full(len(part), 0.9, np.float32)

    class Namer:
        def __init__(self, oracle, meta):
            self.oracle, self.meta = oracle, meta

        def __call__(self, pixels):
            probs = np.full((len(pixels), len(self.meta["class_names"])), 0.001, np.float32)
            probs[np.arange(len(pixels)), self.oracle.classes] = 0.95
            return probs, np.tile([0.0, 0.0, 1.0, 1.0], (len(pixels), 1))  # the crop's box: the detection's


@pytest.mark.parametrize("every", [1, 2])
def test_true_detections_make_one_inventory_row_per_sign_with_its_class(small_drive, tmp_path, every):
    """Detections that are the truth, through decoding, ByteTrack, the inventory and the metrics: every sign
    counted once with its class, no identity switch; the CSV names a crop saved beside it."""
    video, truth = small_drive
    oracle = Oracle(truth, every)
    records = []
    rows = detect_video(Finder(oracle.detector, oracle.namer), video, min_score=0.3, min_probability=0.5, every=every,
                        track=TrackParams(), inventory=tmp_path / "signs.csv", emit=records.append,
                        gpx=read_gpx(video.with_name("drive.gpx")))
    assert [r["frame"] for r in records] == list(range(0, 80, every))
    unconfirmed = [d for r in records for d in r["detections"] if d["track_id"] is None]
    assert len(unconfirmed) <= 2 * 3  # a track is confirmed on its second view (track.min_frames); leaving the frame,
    # a sign jumps between frames searched 0.2 s apart
    searched = truth[truth["frame"] % every == 0]
    found = pd.DataFrame([{"frame": r["frame"], "track_id": d["track_id"], **dict(zip(BOX, d["box"]))}
                          for r in records for d in r["detections"]])
    tracking = score_tracks(searched, found, [r["frame"] for r in records])
    assert tracking["id_switches"] == 0 and tracking["idf1"] > 0.9 and tracking["signs"] == 3
    inventory = score_inventory(truth, rows)
    assert inventory | {"rows": 3, "precision": 1.0, "recall": 1.0, "class_accuracy": 1.0} == inventory
    written = list(csv.DictReader(open(tmp_path / "signs.csv")))
    assert [int(r["class_id"]) for r in written] == [r["class_id"] for r in rows]
    assert sorted(truth.groupby("track_id")["class_id"].first()) == sorted(r["class_id"] for r in rows)
    for r in written:
        assert (tmp_path / r["crop"]).is_file() and float(r["confidence"]) == 1.0
        assert float(r["first_time"]) <= float(r["best_time"]) <= float(r["last_time"])
        # placed where the camera was at the best view: 14 m/s due north of the drive's start
        north = (float(r["lat"]) - drive.START[0]) * drive.METRES_PER_DEGREE
        assert north == pytest.approx(14 * float(r["best_time"]), abs=0.05) and float(r["lon"]) == drive.START[1]
    features = json.loads((tmp_path / "signs.geojson").read_text())["features"]
    assert [f["properties"]["track_id"] for f in features] == [r["track_id"] for r in rows]
    assert [f["geometry"]["coordinates"] for f in features] == [[r["lon"], r["lat"]] for r in rows]


def _frame(index, fps=10):
    return Frame(index, index / fps, np.zeros((100, 100, 3), np.uint8))


def test_the_inventory_votes_by_score_times_probability_and_drops_short_tracks(tmp_path):
    names = ["a", "b", "c"]
    with Inventory(names, tmp_path / "inv.csv", TrackParams(min_views=3, lost_seconds=0.5)) as inv:
        views = [(0, 0.9, 0.9), (1, 0.9, 0.4), (1, 0.9, 0.4), (1, 0.5, 0.5)]  # (class, score, probability)
        for k, (c, s, p) in enumerate(views):
            inv.add(_frame(k), [{"track_id": 7, "box": [10, 10, 30, 30], "class_id": c, "score": s, "probability": p},
                                {"track_id": 8 if k < 2 else None, "box": [50, 50, 60, 60], "class_id": 2,
                                 "score": 0.9, "probability": 0.9}])
        inv.add(_frame(30), [])  # 2.6 s later: track 7 is retired (written out) before the end
        assert not inv.tracks and len(inv.rows) == 1
    (row,) = inv.rows
    weights = {0: 0.81, 1: 0.36 + 0.36 + 0.25}
    assert row["class"] == "b" and row["confidence"] == round(weights[1] / sum(weights.values()), 4)
    assert (row["views"], row["first_frame"], row["last_frame"], row["best_frame"]) == (4, 0, 3, 1)
    assert (tmp_path / "inv" / "track_00007.jpg").is_file()
    assert [r["track_id"] for r in csv.DictReader(open(tmp_path / "inv.csv"))] == ["7"]  # track 8: 2 views


def test_an_inventory_interrupted_leaves_nothing(tmp_path):
    with pytest.raises(DataError):
        with Inventory(["a"], tmp_path / "inv.csv", TrackParams(min_views=1)) as inv:
            inv.add(_frame(0), [{"track_id": 1, "box": [1, 1, 9, 9], "class_id": 0, "score": 1.0, "probability": 1.0}])
            raise DataError("the video was cut short")
    assert list(tmp_path.iterdir()) == []


def test_track_metrics_count_an_identity_switch_and_read_any_table_layout():
    truth = pd.DataFrame({"frame": range(10), "track_id": 1, "left": 10.0, "top": 10.0, "right": 30.0, "bottom": 30.0})
    found = truth.assign(track_id=[5] * 5 + [6] * 5, left=11.0)
    scored = score_tracks(truth, found, list(range(10)))
    assert scored["id_switches"] == 1 and scored["idf1"] == pytest.approx(0.5) and scored["mota"] == pytest.approx(0.9)
    # the same boxes as a Fortran-ordered table (pandas' own layout after some operations): the same answer
    fortran = pd.DataFrame(np.asfortranarray(found.to_numpy(np.float64)), columns=found.columns)
    assert score_tracks(truth, fortran, list(range(10))) == scored
    assert score_tracks(truth, found.iloc[:0], list(range(10)))["box_recall"] == 0.0


def test_inventory_metrics_count_duplicates_background_and_wrong_classes():
    truth = pd.DataFrame({"frame": [0, 0], "track_id": [1, 2], "class_id": [4, 5], "left": [0, 50], "top": [0, 50],
                          "right": [20, 70], "bottom": [20, 70]})
    row = lambda box, c: {"best_frame": 0, "class_id": c, **dict(zip(BOX, box))}  # noqa: E731
    rows = [row((0, 0, 20, 20), 4), row((1, 1, 20, 20), 4), row((50, 50, 70, 70), 9), row((100, 100, 120, 120), 4)]
    got = score_inventory(truth, rows)
    assert (got["precision"], got["recall"], got["class_accuracy"]) == (0.5, 1.0, 0.5)
    assert (got["duplicates"], got["background"]) == (1, 1)


def _gpx_text(points: str) -> str:
    return (f'<?xml version="1.0"?><gpx version="1.1" creator="t" xmlns="http://www.topografix.com/GPX/1/1">'
            f'<trk><trkseg>{points}</trkseg></trk></gpx>')


def test_a_gpx_track_places_by_time_and_bad_ones_are_one_line_naming_the_file(tmp_path):
    """Linear between points, the video's time 0 at the track's first point plus the offset, nothing
    outside the track; a file missing, not GPX, without track points, untimed or going back in time:
    a DataError naming it and saying what is wrong."""
    point = '<trkpt lat="{}" lon="{}"><time>2026-06-01T10:00:{:02d}Z</time></trkpt>'
    good = tmp_path / "good.gpx"
    good.write_text(_gpx_text(point.format(50.0, 8.0, 0) + point.format(50.001, 8.002, 10)))
    track = read_gpx(good)
    assert track.at(5.0) == pytest.approx((50.0005, 8.001)) and track.at(10.5) is None and track.at(-0.1) is None
    assert read_gpx(good, offset=4.0).at(1.0) == pytest.approx((50.0005, 8.001))
    untimed = '<trkpt lat="50" lon="8"></trkpt>'
    for name, text, message in (
            ("missing.gpx", None, "GPX file not found"),
            ("text.gpx", "just text", "not a GPX file"),
            ("binary.gpx", b"\xff\xfe\x00garbage", "not a GPX file"),
            ("empty.gpx", _gpx_text(""), "no track points"),
            ("untimed.gpx", _gpx_text(point.format(50, 8, 0) + untimed + untimed), "2 of 3 track points have no time "
                                                                                  "(the first: point 2)"),
            ("back.gpx", _gpx_text(point.format(50, 8, 5) + point.format(50, 8, 3)), "track point 2's time")):
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
            read_gpx(path)


def test_detect_on_a_video_as_a_user_runs_it(small_drive, tmp_path):
    """`tsloc detect drive.mp4` with a (random) detector and the stub namer: a JSON line per frame with its
    index and time, track ids with --track (its thresholds from params.yaml), the inventory CSV and its crops,
    the drawn video, CSV output."""
    import tsloc.scenes.model as det
    video, truth = small_drive
    det.save(tmp_path / "d.pt", det.build_detector("none", fpn_channels=32, head_convs=1, seed=0),
             {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4})
    stub_model(tmp_path / "m.pt")
    # the random detector scores about 0.07 everywhere: tracks start from there (track.* of params.yaml is read)
    (tmp_path / "params.yaml").write_text("track:\n  high_score: 0.05\n  new_score: 0.05\n  min_views: 1\n")
    args = ["detect", video, "--detector", tmp_path / "d.pt", "--model", tmp_path / "m.pt", "--device", "cpu",
            "--min-score", "0", "--min-probability", "0"]
    proc = run_cli(*args, "--inventory", tmp_path / "out" / "signs.csv", "--draw", tmp_path / "out" / "boxes.mp4",
                   "--every", "4", "--gpx", video.with_name("drive.gpx"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(0, 80, 4))
    assert records[3]["time"] == 0.6 and (records[3]["width"], records[3]["height"]) == (640, 384)
    assert any(d["track_id"] is not None for r in records for d in r["detections"])
    assert probe(tmp_path / "out" / "boxes.mp4")[:4] == (640, 384, 5, 20)
    rows = list(csv.DictReader(open(tmp_path / "out" / "signs.csv")))
    assert rows and all(r["class"] == "class 3" and (tmp_path / "out" / r["crop"]).is_file() for r in rows)
    placed = json.loads((tmp_path / "out" / "signs.geojson").read_text())["features"]  # every row: all within the track
    assert [f["geometry"]["coordinates"] for f in placed] == [[float(r["lon"]), float(r["lat"])] for r in rows]
    proc = run_cli(*args, "--format", "csv", "--track", "--every", "20", cwd=tmp_path)
    header = proc.stdout.splitlines()[0]
    assert header == "path,frame,time,width,height,left,top,right,bottom,score,class_id,class,probability,track_id"


def test_detect_refuses_bad_video_input_in_one_line_and_writes_nothing(small_drive, tmp_path):
    video, _ = small_drive
    data = video.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    stub_model(tmp_path / "m.pt")
    import tsloc.scenes.model as det
    det.save(tmp_path / "d.pt", det.build_detector("none", fpn_channels=32, head_convs=1, seed=0),
             {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4})
    models = ["--detector", tmp_path / "d.pt", "--model", tmp_path / "m.pt", "--device", "cpu"]
    proc = run_cli("detect", tmp_path / "cut.mp4", *models, "--inventory", tmp_path / "signs.csv", "--draw",
                   tmp_path / "o.mp4", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") <= 2 and "cut.mp4: not a video FFmpeg can read" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "d.pt", "m.pt"]
    (tmp_path / "cut.gpx").write_text(_gpx_text('<trkpt lat="50" lon="8"></trkpt>'))
    proc = run_cli("detect", video, *models, "--inventory", tmp_path / "signs.csv", "--gpx", tmp_path / "cut.gpx",
                   cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cut.gpx: 1 of 1 track points have no time" in proc.stderr
    (tmp_path / "cut.gpx").unlink()
    for paths, extra, message in (([tmp_path / "m.pt"], ["--track"], "--track: for a video"),
                                  ([video, video], [], "give one video at a time"),
                                  ([video], ["--draw", tmp_path / "frames"], "--draw with a video writes a video"),
                                  ([video], ["--every", "0"], "--every must be at least 1"),
                                  ([video], ["--inventory", tmp_path / "signs.txt"], "--inventory writes a CSV file"),
                                  ([video], ["--gpx", video.with_name("drive.gpx")], "--gpx places the inventory's signs")):
        proc = run_cli("detect", *paths, *models, *extra, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "d.pt", "m.pt"]
