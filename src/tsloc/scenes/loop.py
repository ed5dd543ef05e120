"""The detector's loop in torchvision's detection references' shape: `fit_detector` trains on windows
(tsloc.scenes.windows; the model returns its losses in training mode; AdamW, a one-epoch linear
warm-up, then a cosine to zero; the state after every epoch kept for a run that is interrupted,
tsloc.resume; halfway, the hard negatives mined once from the training frames), `evaluate` runs it on
whole frames and scores them with COCO's evaluation."""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from ..data.frames import ahead
from ..device import autotuned, to_device
from ..params import AUTO
from ..resume import Resume, restore_torch_streams, torch_streams
from ..schedule import warmup_cosine
from .evaluation import LOOSE_IOU, box_iou, evaluate as coco_evaluate
from .model import TorchDetector
from .windows import LIGHT, cut_window, photometric, window_plan

MINE_SCORE = 0.2    # a false find this confident is a hard negative
MINE_PER_FRAME = 5  # the most confident of them in each frame


def mine_negatives(model, frames: Sequence, boxes: list[np.ndarray], device, min_score: float = MINE_SCORE,
                   per_frame: int = MINE_PER_FRAME) -> list[np.ndarray]:
    """Hard negatives: per training frame, the detector's finds scoring `min_score` or more that
    overlap no true box (IoU under 0.1: what scenes_evaluate counts as background, not a loose box),
    the `per_frame` most confident (the detector answers best score first). The model is left in
    training mode."""
    detector = TorchDetector(model, {}, device)
    found_all = []
    for i, frame in enumerate(tqdm(ahead(frames), total=len(frames), desc="hard negatives", unit="frame", leave=False)):
        found, _ = detector(frame, min_score)
        if len(found) and len(boxes[i]):
            found = found[box_iou(found, boxes[i]).max(1) < LOOSE_IOU]
        found_all.append(found[:per_frame].astype(np.float32))
    model.score_thresh = detector.score_thresh
    model.train()
    return found_all


def window_threads(workers: int | str, device) -> int:
    """`detector.workers`; auto: none on the CPU, where the step's own threads use every core (2 threads
    cutting windows made training 0.92x as fast on 2 cores: benchmarks/detector_training.py), and the
    cores but one, at most 8, beside a GPU, which would otherwise wait for the windows."""
    if workers != AUTO:
        return int(workers)
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if torch.device(device).type == "cuda" else 0


def batches(plan: list, frames: Sequence, boxes: list[np.ndarray], d, rng: np.random.Generator, workers: int = 0):
    """The epoch's windows in batches of `d.batch_size`: (images, boxes) each cut, mirrored and lit.
    Every random draw is made here first, in the order a loop over the windows would make them, so
    the windows are the same whether `workers` threads cut them (decoding and resampling release the
    GIL) or the caller does (0)."""
    draws = [(bool(d.flip and rng.random() < 0.5), *rng.uniform(1 - LIGHT, 1 + LIGHT, 2)) for _ in plan]

    def cut(k: int):
        i, scale, left, top = plan[k]
        flip, brightness, contrast = draws[k]
        image, b = cut_window(frames[i], boxes[i], scale, left, top, d.window, flip)
        return photometric(image, brightness, contrast), b
    with ThreadPoolExecutor(workers) if workers else contextlib.nullcontext() as pool:
        run = pool.map if workers else map
        for s in range(0, len(plan), d.batch_size):
            yield list(run(cut, range(s, min(s + d.batch_size, len(plan)))))


def fit_detector(model, frames: Sequence, boxes: list[np.ndarray], sizes: list[tuple[int, int]], d, *, device,
                 log=None, resume: Resume | None = None) -> dict:
    """Train `model` on windows of `frames` (uint8 RGB arrays or PIL images, or tsloc.data.frames.FrameFiles
    that decodes each when a window needs it; their `boxes` in pixels, their `sizes` (width, height)) as
    the detector.* params `d` say. `log(epoch, row)` gets each epoch's mean losses. Returns the last
    epoch's row."""
    torch.manual_seed(d.seed)
    model.to(device, memory_format=torch.channels_last).train()  # 1.2x faster convolutions on the CPU (oneDNN)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=d.lr, weight_decay=d.weight_decay)
    steps_per_epoch = math.ceil(len(window_plan(boxes, sizes, d.window, d.background_share, d.scale_jitter,
                                                np.random.default_rng(0))) / d.batch_size)
    schedule = warmup_cosine(optimizer, steps_per_epoch * d.epochs, steps_per_epoch)  # one epoch's warm-up
    start, row, negatives, workers = 1, {}, None, window_threads(d.workers, device)
    mine_at = d.epochs // 2 + 1 if d.hard_negatives and d.epochs > 1 else None  # mined before this epoch
    state = resume.load() if resume else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        restore_torch_streams(state, device)
        start, row = state["epoch"] + 1, state["row"]
        negatives = [b.numpy() for b in state["negatives"]] if state.get("negatives") is not None else None
        tqdm.write(f"{resume.path}: continuing after epoch {state['epoch']} of {d.epochs}", file=sys.stderr)
    for epoch in tqdm(range(start, d.epochs + 1), desc="detector epochs", unit="epoch", initial=start - 1,
                      total=d.epochs):
        # each epoch's windows from its own seed, the same after a resume: the child that spawn()'s counter
        # used to give epoch k in an uninterrupted run (k(k+1)/2 - 1), so earlier runs keep their windows
        rng = np.random.default_rng(np.random.SeedSequence(d.seed, spawn_key=(epoch * (epoch + 1) // 2 - 1,)))
        if epoch == mine_at:
            negatives = mine_negatives(model, frames, boxes, device)
        plan = window_plan(boxes, sizes, d.window, d.background_share, d.scale_jitter, rng, negatives, d.hard_negatives)
        sums, n = {}, 0
        cut = batches(plan, frames, boxes, d, rng, workers)
        with autotuned(device):  # on a GPU: TF32 and cuDNN's autotuner for the windows' one size
            for batch in tqdm(ahead(cut, 1) if workers else cut, total=math.ceil(len(plan) / d.batch_size),
                              desc=f"epoch {epoch}", unit="batch", leave=False):  # the next batch cut during this step
                images = [to_device(image, device) for image, _ in batch]  # pinned, not waited for, on a GPU
                targets = [{"boxes": to_device(b, device), "labels": torch.zeros(len(b), dtype=torch.int64, device=device)}
                           for _, b in batch]
                losses = model(images, targets)
                loss = sum(losses.values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                for k, v in losses.items():  # summed where they are, in float64: no wait for the device in a step
                    sums[k] = sums.get(k, 0.0) + v.detach().double() * len(images)
                n += len(images)
        sums = {k: float(v) for k, v in sums.items()}
        row = {k: v / max(n, 1) for k, v in sums.items()} | {"loss": sum(sums.values()) / max(n, 1), "windows": n,
                                                               "hard_negatives": sum(map(len, negatives or []))}
        if log:
            log(epoch, row)
        if resume:
            resume.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": schedule.state_dict(), **torch_streams(device), "row": row,
                         "negatives": None if negatives is None else [torch.from_numpy(b) for b in negatives]})
    return row


def evaluate(model, table, frames, device, progress: str | None = "validation frames") -> dict:
    """The detector on whole frames (tsloc.data.frames.FrameFiles: decoded a frame ahead in a thread), scored
    against `table`'s boxes with COCO's evaluation (tsloc.scenes.evaluation.evaluate: ap50, ap, ...)."""
    detector = TorchDetector(model, {}, device)
    detections = []
    for path, frame in tqdm(ahead(zip(frames.paths, frames)), total=len(frames), desc=progress, unit="frame",
                            leave=False, disable=progress is None):
        boxes, scores = detector(frame)
        detections += [{"frame": path, "box": b.tolist(), "score": float(s)} for b, s in zip(boxes, scores)]
    return coco_evaluate(table, detections)
