"""Training windows cut from whole frames: one around each sign (the sign anywhere inside, the
frame scaled by up to 1 +- `scale_jitter` first) and a share taken anywhere (mostly background,
and the frames without signs), some of these, later in training, around the detector's own false
finds (hard negatives: signs of classes the data set does not box, backs of signs). The detector
trains on these, not on whole frames: a 1360 x 800 frame is 80% road and sky, and 10 times the
pixels of a 320-px window."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .model import frame_tensor

MIN_VISIBLE = 0.5  # a sign cut by the window's edge counts when at least this share of it is inside


def _around(box, size: tuple[int, int], window: int, scale: float, rng: np.random.Generator) -> tuple[int, int]:
    """A window's (left, top) in the frame scaled by `scale` that holds `box` (a random place of those
    that do; the nearest when it is larger than the window)."""
    w, h = size
    l, t, r, b = (np.asarray(box) * scale).tolist()
    sw, sh = int(round(w * scale)), int(round(h * scale))
    lo_x, hi_x = max(0, int(np.ceil(r)) - window), min(int(l), max(0, sw - window))
    lo_y, hi_y = max(0, int(np.ceil(b)) - window), min(int(t), max(0, sh - window))
    x = int(rng.integers(lo_x, hi_x + 1)) if hi_x >= lo_x else int(max(0, min(l, sw - window)))
    y = int(rng.integers(lo_y, hi_y + 1)) if hi_y >= lo_y else int(max(0, min(t, sh - window)))
    return x, y


def window_plan(boxes_per_frame: list[np.ndarray], sizes: list[tuple[int, int]], window: int, background_share: float,
                scale_jitter: float, rng: np.random.Generator, negatives: list[np.ndarray] | None = None,
                hard_share: float = 0.0) -> list[tuple[int, float, int, int]]:
    """One epoch's windows as (frame index, scale, left, top) in pixels of the scaled frame: one per
    sign, plus `background_share` of the total at random places of random frames; shuffled. Given
    `negatives` (per frame, boxes the detector found where no sign is: tsloc.scenes.loop.mine_negatives),
    `hard_share` of those background windows each holds one of them instead, drawn at random: as many
    windows as without them, so the schedule's steps stay what they were."""
    plan = []
    jitter = lambda: float(rng.uniform(1 - scale_jitter, 1 + scale_jitter))  # noqa: E731
    for i, boxes in enumerate(boxes_per_frame):
        for box in boxes:
            s = jitter()
            plan.append((i, s, *_around(box, sizes[i], window, s, rng)))
    extra = int(round(len(plan) * background_share / (1 - background_share))) if plan else len(sizes)
    pool = [(i, box) for i, found in enumerate(negatives or []) for box in found]
    hard = int(round(extra * hard_share)) if pool else 0
    for k in rng.integers(0, len(pool), hard) if hard else []:
        i, box = pool[int(k)]
        s = jitter()
        plan.append((i, s, *_around(box, sizes[i], window, s, rng)))
    for _ in range(extra - hard):
        i = int(rng.integers(0, len(sizes)))
        s = jitter()
        sw, sh = int(round(sizes[i][0] * s)), int(round(sizes[i][1] * s))
        plan.append((i, s, int(rng.integers(0, max(1, sw - window + 1))), int(rng.integers(0, max(1, sh - window + 1)))))
    order = rng.permutation(len(plan))
    return [plan[k] for k in order]


def cut_window(frame, boxes: np.ndarray, scale: float, left: int, top: int, window: int,
               flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The window (3, window, window) in 0..1 of the frame (uint8 RGB (H, W, 3) or a PIL image) scaled
    by `scale` (to the nearest whole size; bilinear, antialiased), zero-padded where it leaves the
    frame; and the boxes inside it (N, 4), clipped, those less than MIN_VISIBLE inside dropped.
    Only the window's own region is resampled (PIL's resize of a source box), not the whole frame.
    `flip` mirrors both (a sign's class may change with it, but the detector only finds signs)."""
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
    w, h = image.size
    sw, sh = int(round(w * scale)), int(round(h * scale))
    right, bottom = min(left + window, sw), min(top + window, sh)
    out = torch.zeros(3, window, window)
    if right > left and bottom > top:
        if (sw, sh) == (w, h):
            part = image.crop((left, top, right, bottom))
        else:
            fx, fy = w / sw, h / sh
            part = image.resize((right - left, bottom - top), Image.Resampling.BILINEAR,
                                box=(left * fx, top * fy, right * fx, bottom * fy))
        out[:, :bottom - top, :right - left] = frame_tensor(np.array(part))
    b = torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    b = b * torch.tensor([sw / w, sh / h, sw / w, sh / h]) - torch.tensor([left, top, left, top], dtype=torch.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    clipped = b.clamp(0, window)
    visible = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    keep = visible >= MIN_VISIBLE * area
    b = clipped[keep]
    if flip:
        out = out.flip(-1)
        b = torch.stack([window - b[:, 2], b[:, 1], window - b[:, 0], b[:, 3]], 1)
    return out, b


LIGHT = 0.3  # brightness and contrast in 1 +- this, as light changes between frames


def photometric(image: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """The window's brightness and contrast scaled (drawn in 1 +- LIGHT by the training loop)."""
    mean = image.mean()
    return ((image - mean) * contrast + mean * brightness).clamp_(0, 1)
