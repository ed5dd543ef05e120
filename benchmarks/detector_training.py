"""The detector's training speed and memory on real frames: the scene branch's training (windows cut
from frames read from disk as each window needs them) on every frame of a scene data set, timed
per epoch, with the process's peak resident memory.

    python ../shared/data/gtsdb/restore.py ../gtsdb
    python benchmarks/detector_training.py --scenes ../gtsdb [--epochs 2] [--recipe-epochs 12] [--workers 0 2]
    python benchmarks/detector_training.py --scenes ../gtsdb --device cuda --workers 8 --profile 40   # what bounds a step

Every epoch cuts the same number of windows (one per sign plus the background share), so an epoch's
time times the recipe's epochs is the training's time; `--epochs` says how many epochs are measured
(their median is used). The detector params are the defaults of `detector.*` (tsloc.params), the
device `--device` (auto: a GPU where there is one). `--workers` runs the training once per count of
threads cutting windows (`detector.workers`), side by side; the hard negatives' one pass over the
frames (`mine_negatives`, once per training) is timed on its own after, not inside an epoch. Memory:
the peak resident memory, against what holding the frames decoded would take (width x height x 3
bytes each).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from tsloc.data.frames import FrameFiles, boxes_and_sizes
from tsloc.data.images import open_rgb
from tsloc.device import select_device
from tsloc.params import DetectorParams
from tsloc.scenes import model as det
from tsloc.scenes.loop import fit_detector, mine_negatives
from tsloc.scenes.ingest import read


def profile(frames, boxes, sizes, d, device, count: int) -> None:
    """One epoch of the detector's training on the first `count` frames under torch.profiler, after one as a
    warm-up (profiling.profile_pass): the GPU issue saw the detector's training keep a GPU 8-10% busy."""
    from profiling import profile_pass
    frames, boxes, sizes = FrameFiles(frames.paths[:count], frames.decode), boxes[:count], sizes[:count]
    model = det.build_detector(d.weights, **det.architecture(d), seed=d.seed)
    rows = []
    run = lambda: fit_detector(model, frames, boxes, sizes, d, device=device, log=lambda e, row: rows.append(row))  # noqa: E731
    run()
    steps = -(-rows[-1]["windows"] // d.batch_size)
    profile_pass(run, device, steps, f"the detector, {device}, windows of {d.window} px, batch {d.batch_size}, "
                                     f"{d.workers} threads cutting them")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", required=True, help="a scene data set (a GTSDB package or a manifest of frames)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs measured (default: 2)")
    ap.add_argument("--recipe-epochs", type=int, default=12, help="epochs the training runs (the best recipe: 12)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, nargs="+", default=[0],
                    help="threads cutting windows, one training per value (default: 0, auto's count on the CPU)")
    ap.add_argument("--profile", type=int, metavar="FRAMES",
                    help="instead: one epoch on the first FRAMES frames under torch.profiler (after one as a warm-up), "
                         "with the first --workers count: what bounds a step")
    args = ap.parse_args()
    table = read("auto", Path(args.scenes)).table
    paths = list(dict.fromkeys(table["frame"]))
    boxes, sizes = boxes_and_sizes(table, paths)
    base = dataclasses.replace(DetectorParams(), epochs=args.epochs, device=args.device, hard_negatives=0)
    device = select_device(base.device)
    print(f"{len(paths)} frames, {sum(len(b) for b in boxes)} signs ({args.scenes}); {device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    frames = FrameFiles(paths, open_rgb)
    if args.profile:
        profile(frames, boxes, sizes, dataclasses.replace(base, epochs=1, workers=args.workers[0]), device, args.profile)
        return
    speed = {}
    for workers in args.workers:
        d = dataclasses.replace(base, workers=workers)
        model = det.build_detector(d.weights, **det.architecture(d), seed=d.seed)
        marks, rows = [time.perf_counter()], []

        def log(epoch, row):
            marks.append(time.perf_counter())
            rows.append(row)
        fit_detector(model, frames, boxes, sizes, d, device=device, log=log)
        seconds = [b - a for a, b in zip(marks, marks[1:])]
        epoch = statistics.median(seconds)
        windows = rows[-1]["windows"]
        speed[workers] = windows / epoch
        print(f"workers {workers}: epochs {', '.join(f'{s:.1f} s' for s in seconds)}; {windows} windows of {d.window} px "
              f"each, {speed[workers]:.1f} windows/s; training of {args.recipe_epochs} epochs on these {len(paths)} "
              f"frames: {epoch * args.recipe_epochs / 60:.1f} min (median epoch x {args.recipe_epochs})")
    if len(speed) > 1:
        first = args.workers[0]
        print("windows/s against workers " + str(first) + ": "
              + ", ".join(f"{w}: {v / speed[first]:.2f}x" for w, v in speed.items()))
    started = time.perf_counter()
    mine_negatives(model, frames, boxes, device)
    print(f"hard negatives mined once (a pass over the {len(paths)} frames): {time.perf_counter() - started:.1f} s")
    held = sum(w * h * 3 for w, h in sizes) / 2**20
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          f"(the frames held decoded would be {held:.0f} MB)")


if __name__ == "__main__":
    main()
