"""Finding and naming signs in whole frames, side by side in one process: the detector through PyTorch
(torchvision's FCOS, eager) and its ONNX exports through ONNX Runtime (fp32, int8), the namer the
crop model's ONNX file, on the same frames.

    dvc repro detector_export export && python benchmarks/scenes.py [--frames DIR] [--count 20] [--rounds 3] [--models DIR]

Frames: the first `--count` image files of DIR (e.g. ../gtsdb/FullIJCNN2013: 1360 x 800), else
synthetic street scenes of 1360 x 800 generated into a temporary folder. The backends take turns in
rounds, so a slower moment of the machine is shared. `--models` (default: models/): the folder holding
detector.pt, detector.onnx, detector.int8.onnx and model.onnx (or model.pt), as the pipeline writes them;
with `--export` the two detector ONNX files are first written there from detector.pt (int8 calibrated
on the benchmark's own frames: enough for its speed; the detector_export stage calibrates on
training frames and scores AP).
(a) the detector alone on decoded frames (frames per second), at the operating point (`--min-score`);
(b) end to end as `tsloc detect` runs (decoding a few frames ahead in a thread, finding, naming,
    one JSON line per frame), frames per second;
(c) memory as frames stream: the process's peak resident memory after (b) on `--count` frames, and
    after the same files ten times over (a bounded stream: the peak does not grow with the count).

`--device cuda`: the PyTorch files (detector.pt, its refiner.pt, model.pt as the namer) on the GPU, as
scenes_evaluate runs them there (the ONNX detectors stay on the CPU). `--parts`: where a frame's time
goes in the PyTorch detector's end to end run, in ms a frame: the detector (network and decoding), the
refiner and the namer each split into cutting their crops (on the CPU) and their network; on a GPU the
network's share is small when the CPU's work bounds it (the GPU issue saw scenes_evaluate at 2.9
frames/s on an H200).
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

from tsloc.serving.backend import Refined, load_backend, load_detector, pick_device
from tsloc.data.frames import decode_frames
from tsloc.serving.detect import detect_files
from tsloc.paths import DETECTOR, DETECTOR_INT8, DETECTOR_ONNX, MODEL, ONNX, first_existing
from tsloc.serving.predict import collect
from tsloc.serving.find import Finder


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", help="a folder of frames (default: synthetic 1360 x 800 scenes)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-score", type=float, default=0.3, help="the detector's operating point (default: 0.3)")
    ap.add_argument("--models", default=str(MODEL.parent), help="the folder of the model files (default: models)")
    ap.add_argument("--export", action="store_true", help="first write detector.onnx and detector.int8.onnx there")
    ap.add_argument("--device", default="cpu", help="where the PyTorch files run (cpu, cuda, auto; default cpu)")
    ap.add_argument("--parts", action="store_true", help="also where a frame's time goes (the PyTorch detector)")
    args = ap.parse_args()
    scratch = tempfile.TemporaryDirectory()
    if args.frames:
        files = [str(f) for f, _ in collect([args.frames])][:args.count]
    else:
        from tsloc.scenes import synthetic
        synthetic.generate(Path(scratch.name), frames=args.count, seed=1, width=1360, height=800)
        files = [str(f) for f, _ in collect([scratch.name])][:args.count]
    frames = decode_frames(files)
    folder = Path(args.models)
    if args.export:
        from tsloc.quantize import quantize_int8
        from tsloc.scenes import model as det
        from tsloc.scenes.export import export_detector
        export_detector(*det.load(folder / DETECTOR.name), folder / DETECTOR_ONNX.name)
        quantize_int8(folder / DETECTOR_ONNX.name, folder / DETECTOR_INT8.name, frames[:8], float_convs=3,
                      batch_size=None, input_name="frame", symbolic_shapes=False)
    device = pick_device(args.device, [folder / DETECTOR.name])  # as `tsloc detect --device` resolves it
    on_cpu = str(device) == "cpu"
    namer = load_backend(first_existing(folder / ONNX.name, folder / MODEL.name) if on_cpu else folder / MODEL.name,
                         device)
    torch_detector = f"pytorch {device}"
    detectors = {torch_detector: load_detector(folder / DETECTOR.name, device)}
    for label, name in (("onnxruntime fp32", DETECTOR_ONNX.name), ("onnxruntime int8", DETECTOR_INT8.name)):
        if (folder / name).exists():
            detectors[label] = load_detector(folder / name)
    h, w = frames[0].shape[:2]
    print(f"{len(files)} frames of {w} x {h} ({args.frames or 'synthetic'}); namer {namer.name}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    for d in detectors.values():  # warm-up: first calls allocate
        d(frames[0], args.min_score)
    alone = {k: [] for k in detectors}
    whole = {k: [] for k in detectors}
    for _ in range(args.rounds):
        for label, d in detectors.items():
            started = time.perf_counter()
            for f in frames:
                d(f, args.min_score)
            alone[label].append(len(frames) / (time.perf_counter() - started))
            started = time.perf_counter()
            detect_files(Finder(d, namer), files, min_score=args.min_score, min_probability=0.5, out=io.StringIO())
            whole[label].append(len(frames) / (time.perf_counter() - started))
    print(f"{'detector':18} {'(a) frames/s, detector alone':>30} {'(b) frames/s, end to end':>26}")
    for label in detectors:
        print(f"{label:18} {np.median(alone[label]):30.2f} {np.median(whole[label]):26.2f}")
    fastest = max(detectors, key=lambda k: np.median(whole[k]))
    finder = Finder(detectors[fastest], namer)
    before = peak_mb()
    detect_files(finder, files * 10, min_score=args.min_score, min_probability=0.5, out=io.StringIO())
    print(f"(c) {fastest}: peak resident memory {before:.0f} MB after the runs above on {len(files)} frames, "
          f"{peak_mb():.0f} MB after {10 * len(files)} more")
    if args.parts:
        parts(detectors[torch_detector], namer, frames, args.min_score)
    sys.stdout.flush()


class Timed:
    """A model whose calls' seconds are summed: its answers are NumPy arrays, so a GPU's work is done when
    it returns."""

    def __init__(self, model):
        self.model, self.meta, self.name, self.seconds = model, model.meta, model.name, 0.0

    def __call__(self, *args):
        started = time.perf_counter()
        out = self.model(*args)
        self.seconds += time.perf_counter() - started
        return out


def parts(detector, namer, frames: list, min_score: float) -> None:
    """Where a frame's time goes in Finder(detector, namer), in ms a frame (after a frame as a warm-up)."""
    refiner = None
    if isinstance(detector, Refined):
        detector.detector, detector.refiner = Timed(detector.detector), Timed(detector.refiner)
        refiner = detector.refiner
    finding, naming = Timed(detector), Timed(namer)
    finder = Finder(finding, naming)
    finder(frames[0], min_score)
    for t in (finding, naming, *((detector.detector, refiner) if refiner else ())):
        t.seconds = 0.0
    started = time.perf_counter()
    found = sum(len(finder(f, min_score)) for f in frames)
    whole = time.perf_counter() - started
    ms = lambda seconds: 1000 * seconds / len(frames)  # noqa: E731
    net = detector.detector.seconds if refiner else finding.seconds
    rows = {"detector (network, decoding)": net}
    if refiner:
        rows |= {"refiner: cutting crops": finding.seconds - net - refiner.seconds, "refiner: network": refiner.seconds}
    rows |= {"namer: cutting crops, the rest": whole - finding.seconds - naming.seconds, "namer: network": naming.seconds}
    print(f"(d) where a frame's time goes ({detector.name}; namer {namer.name}; {found / len(frames):.1f} detections "
          f"a frame at min score {min_score}): {ms(whole):.1f} ms a frame")
    for label, seconds in rows.items():
        print(f"    {label:30} {ms(seconds):8.1f} ms  {100 * seconds / whole:5.1f}%")


if __name__ == "__main__":
    main()
