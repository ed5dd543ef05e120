"""Inference speed side by side in one process: the `.pt` model through PyTorch (eager, as predict ran
it before ONNX Runtime), and its exports through ONNX Runtime, fp32 and int8, on the same images.

    dvc repro export && python benchmarks/inference.py [--seconds 6] [--files 512]

(a) From decoded tensors: uint8 test images from the image store (data/features/images.npy), at
    batch 1 and batch 64, PyTorch as the project runs it (channels-last) and in torchvision's
    default layout (NCHW, the issue's "PyTorch eager" row); the backends take turns in rounds, so a slower moment of the machine is
    shared. Crops per second, and the time per crop at the 50th and 99th percentile of the calls
    (a call's time divided by its batch: at batch 1, the latency).
(b) From image files to records, as `tsloc predict` runs (decoding in parallel threads, ahead of
    inference), on the test images' files, at batch 1 and 64; and the path `tsloc predict` took
    before (decoding in the main thread, then PyTorch), the baseline the issue names. The time per
    crop here is the interval between batches delivered, divided by the batch.
Then the ratios the issue asks for. Every figure comes from this one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tsloc.serving.backend import load_backend
from tsloc.crops.checkpoint import load as load_model
from tsloc.crops.inference import TorchBackend
from tsloc.serving.predict import predict_files


class Timed:
    """A backend that records when each of its calls ended."""

    def __init__(self, backend):
        self.backend, self.meta, self.ends = backend, backend.meta, []

    def __call__(self, images):
        out = self.backend(images)
        self.ends.append(time.perf_counter())
        return out


def nchw(path: str) -> TorchBackend:
    """The same model in torchvision's default layout (contiguous NCHW, no channels-last): the
    "PyTorch eager" row of the issue's table. The project's own path is channels-last."""
    model, meta = load_model(path)
    model = model.to(memory_format=torch.contiguous_format)
    model.features = model.backbone  # in eval mode the same blocks; without the switch to channels-last
    return TorchBackend(model, meta)


def per_crop(seconds: list[float], batch: int) -> dict:
    ms = 1000 * np.asarray(seconds) / batch
    return {"crops_per_s": batch * len(seconds) / sum(seconds), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def from_tensors(backends: dict, images: np.ndarray, batch: int, seconds: float, rounds: int = 3) -> dict:
    calls = {name: [] for name in backends}
    for name, backend in backends.items():  # warm-up: first calls allocate and plan
        for _ in range(3):
            backend(images[:batch])
    start = 0
    for _ in range(rounds):
        for name, backend in backends.items():
            until = time.perf_counter() + seconds / rounds
            while time.perf_counter() < until:
                x = images[start:start + batch]
                if len(x) < batch:
                    start, x = 0, images[:batch]
                t = time.perf_counter()
                backend(x)
                calls[name].append(time.perf_counter() - t)
                start += batch
    return {name: per_crop(c, batch) for name, c in calls.items()}


def from_files(backend, files: list[str], batch: int, threads: int) -> dict:
    timed = Timed(backend)
    with open(os.devnull, "w") as null:
        start = time.perf_counter()
        predict_files(timed, files, batch_size=batch, threads=threads, out=null)
        total = time.perf_counter() - start
    gaps = np.diff([start, *timed.ends])
    return {**per_crop(list(gaps), batch), "crops_per_s": len(files) / total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--onnx", default="models/model.onnx")
    ap.add_argument("--int8", default="models/model.int8.onnx")
    ap.add_argument("--store", default="data/features/images.npy")
    ap.add_argument("--split", default="data/split.csv")
    ap.add_argument("--seconds", type=float, default=6.0, help="per backend and batch size, from tensors")
    ap.add_argument("--files", type=int, default=512, help="image files predicted per backend and batch size")
    args = ap.parse_args()
    for path in (args.model, args.onnx, args.int8, args.store, args.split):
        if not Path(path).is_file():
            print(f"{path}: not found (run `dvc repro export` first, or give the paths)", file=sys.stderr)
            return 2
    split = pd.read_csv(args.split)
    test = np.flatnonzero(split["subset"].to_numpy() == "test")
    images = np.ascontiguousarray(np.load(args.store, mmap_mode="r")[test])
    files = split["path"].to_numpy()[test][:args.files].tolist()
    pt = load_backend(args.model)
    backends = {"PyTorch eager": pt, "PyTorch eager, NCHW": nchw(args.model), "ONNX Runtime fp32": load_backend(args.onnx),
                "ONNX Runtime int8": load_backend(args.int8)}
    meta = pt.meta
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    import onnxruntime
    print(f"# {meta['backbone']} at {meta['image_size']} px, {meta['box_head'] if 'box_head' in meta else 'pooled'} "
          f"box head, recipe {meta.get('recipe')}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}; "
          f"commit {commit or '?'}")
    rows = []
    for batch in (1, 64):
        for name, r in from_tensors(backends, images, batch, args.seconds).items():
            rows.append({"source": "tensors", "backend": name, "batch": batch, **r})
    for batch in (1, 64):
        for name, backend in backends.items():
            if name == "PyTorch eager, NCHW":
                continue
            rows.append({"source": "files", "backend": name, "batch": batch,
                         **from_files(backend, files, batch, threads=4)})
        rows.append({"source": "files", "backend": "PyTorch, decoding in the main thread (predict before)",
                     "batch": batch, **from_files(backends["PyTorch eager"], files, batch, threads=0)})
    table = pd.DataFrame(rows)
    print(f"\n{len(images)} test images as tensors, {len(files)} image files; crops/s and ms per crop\n")
    print("| from | backend | batch | crops/s | p50 ms | p99 ms |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for r in table.itertuples():
        print(f"| {r.source} | {r.backend} | {r.batch} | {r.crops_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |")
    rate = {(r.source, r.backend, r.batch): r.crops_per_s for r in table.itertuples()}
    print("\nratios (the issue's targets in brackets):")
    for batch in (1, 64):
        fp32, int8 = rate[("tensors", "ONNX Runtime fp32", batch)], rate[("tensors", "ONNX Runtime int8", batch)]
        print(f"  batch {batch:2}: tensors, ORT fp32 / PyTorch eager {fp32 / rate[('tensors', 'PyTorch eager', batch)]:.2f}x, "
              f"/ PyTorch eager NCHW {fp32 / rate[('tensors', 'PyTorch eager, NCHW', batch)]:.2f}x [>= 5]; ORT int8 / fp32 {int8 / fp32:.2f}x [>= 1.5]; files, ORT fp32 / predict before "
              f"{rate[('files', 'ONNX Runtime fp32', batch)] / rate[('files', 'PyTorch, decoding in the main thread (predict before)', batch)]:.2f}x [>= 3]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
