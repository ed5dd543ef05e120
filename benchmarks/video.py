"""A dashcam video end to end, side by side in one process: `tsloc detect` on the video (PyAV decoding
a frame ahead, finding, naming; with and without tracking and the inventory) against the same frames
as JPEG files, with the pipeline's ONNX models and operating point as `tsloc detect` picks them.

    dvc repro detector_export export && python benchmarks/video.py [--video FILE] [--seconds 4] [--rounds 3]

Video: FILE, else a synthetic drive of 1360 x 800 (GTSDB's frame size) at 15 frames/s generated into a
temporary folder. The variants take turns in rounds, so a slower moment of the machine is shared.
(a) the frames as JPEG files (`tsloc detect FRAMES/`), frames per second;
(b) the video (`tsloc detect drive.mp4`), frames per second, decoding included;
(c) the video with `--track --inventory`;
(d) memory on a long video: the peak resident memory after (c), and after (c) on a drive `--long`
    times longer searched every `--long`-th frame (the same frames searched, `--long` times the
    frames decoded and the time tracked).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tsloc.params import TrackParams
from tsloc.scenes import drive
from tsloc.serving.backend import default_detector, load_backend, load_detector
from tsloc.serving.detect import RecordWriter, detect_files, detect_video
from tsloc.serving.find import Finder, operating_point
from tsloc.paths import ONNX
from tsloc.video import probe, read_video


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", help="a video file (default: a synthetic 1360 x 800 drive)")
    ap.add_argument("--seconds", type=float, default=4.0, help="the synthetic drive's length (default: 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-score", default="auto", type=lambda v: v if v == "auto" else float(v),
                    help="the operating point, as tsloc detect's (default: auto, the point chosen on validation)")
    ap.add_argument("--min-probability", default="auto", type=lambda v: v if v == "auto" else float(v))
    ap.add_argument("--long", type=int, default=5, help="(d): the long drive's length, in drives (default: 5)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp())
    video = Path(args.video) if args.video else drive.generate(scratch / "drive", seconds=args.seconds, fps=15,
                                                               signs=6, seed=1, width=1360, height=800)[0]
    long = None if args.video else drive.generate(scratch / "long", seconds=args.seconds * args.long, fps=15,
                                                  signs=6 * args.long, seed=2, width=1360, height=800)[0]
    frames_dir = scratch / "frames"
    frames_dir.mkdir()
    for f in read_video(video):
        Image.fromarray(f.image).save(frames_dir / f"{f.index:06d}.jpg", quality=92)
    info = probe(video)
    detector = load_detector(default_detector())
    point = operating_point(detector, default_detector(), args.min_score, args.min_probability)
    finder = Finder(detector, load_backend(ONNX), box=point.pop("box"), vote_iou=point.pop("vote_iou"))
    print(f"operating point: min score {point['min_score']:g}, min probability {point['min_probability']:g}, "
          f"the {finder.box}'s boxes ({point.pop('chosen')})")
    print(f"{video.name}: {info.frames} frames of {info.width} x {info.height} at {float(info.fps):g}/s; detector "
          f"{finder.detector.name}, namer {finder.namer.name}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    variants = {
        "(a) JPEG frames": lambda: detect_files(finder, [str(frames_dir)], out=io.StringIO(), **point),
        "(b) the video": lambda: detect_video(finder, video, emit=RecordWriter(io.StringIO(), "jsonl", []), **point),
        "(c) video, tracks, inventory": lambda: detect_video(
            finder, video, track=TrackParams(), inventory=scratch / "inv" / "signs.csv",
            emit=RecordWriter(io.StringIO(), "jsonl", []), **point),
    }
    variants["(a) JPEG frames"]()  # warm-up: first calls allocate
    speed = {k: [] for k in variants}
    for _ in range(args.rounds):
        for label, work in variants.items():
            started = time.perf_counter()
            work()
            speed[label].append(info.frames / (time.perf_counter() - started))
    print(f"{'':32} {'frames/s (median of ' + str(args.rounds) + ')':>26}")
    for label in variants:
        print(f"{label:32} {np.median(speed[label]):26.2f}")
    before = peak_mb()
    if long:  # generated before any measurement: its rendering and encoding are not in the peak
        detect_video(finder, long, every=args.long, track=TrackParams(), inventory=scratch / "inv2" / "signs.csv",
                     emit=RecordWriter(io.StringIO(), "jsonl", []), **point)
        print(f"(d) peak resident memory {before:.0f} MB after (c) on {info.frames} frames, {peak_mb():.0f} MB after "
              f"a drive {args.long} times longer ({args.long * info.frames} frames decoded, every {args.long}th "
              "searched)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
