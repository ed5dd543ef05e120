"""Does ONNX Runtime's thread spinning cost `tsloc detect`? Its sessions spin their worker threads after
each run by default; `tsloc detect` runs three models in turn on each frame (detector, refiner, namer)
between Python's own work, so the spinning threads of one hold the cores the next needs.
`tsloc.onnxfile.SPIN` (False) turns it off for every session tsloc makes. Side by side in one process,
the settings taking turns in rounds on the same frames, a ready pair (with its refiner) loaded afresh:

    python benchmarks/onnx_spinning.py --frames ../gtsdb/FullIJCNN2013 [--count 100] [--rounds 2] [--model gtsdb]

(a) the detector alone on decoded frames, at the pair's operating point, frames per second;
(b) end to end as `tsloc detect` runs (decoding ahead in a thread, finding, refining, naming, one JSON
    line per frame), frames per second;
(c) the namer alone (one model, as `tsloc predict` runs it): 1024 crops in batches of 64, ms a crop.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import tsloc
from tsloc import onnxfile
from tsloc.data.frames import decode_frame
from tsloc.serving.detect import detect_files
from tsloc.serving.predict import collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", required=True, help="a folder of street frames (GTSDB's: 1360 x 800)")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="gtsdb", help="a ready pair or a run folder (tsloc.load)")
    args = ap.parse_args()
    files = [str(path) for path, _ in collect([args.frames])[:args.count]]
    decoded = [decode_frame(f) for f in files]
    print(f"{len(files)} frames ({args.frames}); {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    results = {True: [], False: []}
    for _ in range(args.rounds):
        for spin in (True, False):
            onnxfile.SPIN = spin  # read when a session is made: the pair is loaded afresh
            pair = tsloc.load(args.model, device="cpu")
            point = pair.point
            pair.finder.detector(decoded[0], point["min_score"])  # the first run's set-up, not timed
            started = time.perf_counter()
            for frame in decoded:
                pair.finder.detector(frame, point["min_score"])
            alone = len(decoded) / (time.perf_counter() - started)
            started = time.perf_counter()
            with open(os.devnull, "w") as out:
                detect_files(pair.finder, files, min_score=point["min_score"],
                             min_probability=point["min_probability"], out=out)
            end_to_end = len(files) / (time.perf_counter() - started)
            namer, size = pair.finder.namer, pair.finder.namer.meta["image_size"]
            crops = np.random.default_rng(0).integers(0, 256, (1024, size, size, 3), dtype=np.uint8)
            namer(crops[:64])
            started = time.perf_counter()
            for i in range(0, len(crops), 64):
                namer(crops[i:i + 64])
            results[spin].append((alone, end_to_end, 1000 * (time.perf_counter() - started) / len(crops)))
    print(f"{pair.finder.detector.name}; namer {pair.finder.namer.name}")
    print(f"{'spinning':26s} (a) frames/s, detector alone  (b) frames/s, end to end  (c) namer alone, ms a crop")
    for spin, rows in results.items():
        print(f"{'on (ONNX Runtime default)' if spin else 'off (tsloc)':26s}"
              + "".join(f"{' / '.join(f'{r[i]:.2f}' for r in rows):>{w}s}" for i, w in ((0, 30), (1, 28), (2, 29))))


if __name__ == "__main__":
    main()
