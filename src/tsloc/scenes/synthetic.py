"""Synthetic street scenes, the scene branch's embedded default: frames with a sky, buildings, a
road, trees and clutter, and 0 to 6 synthetic signs on poles at 16 to 130 px. Deterministic in the
seed; about one frame in seven has no sign. Two layouts, as the crop twins have (tsloc.data.synthetic):

- `manifest` (the default): the crop default's signs (the same 62 classes, ids and names), a
  manifest of frames (tsloc.scenes.manifest) with a `classes.csv` giving each class its category;
- `gtsdb`: GTSDB's twin, the GTSRB twin's signs (43 classes, GTSRB's ids) as the package extracts
  (`FullIJCNN2013/NNNNN.ppm`, `gt.txt` with inclusive edges), so that a crop model trained on the
  GTSRB twin names them: the German scenes' command, offline.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from ..data.synthetic import NUM_CLASSES, SCHEMES, class_look, draw_sign
from ..data.table import packaged_names
from ..io import write_csv

MIN_SIDE, MAX_SIDE = 16, 130
EMPTY_SHARE = 0.15


def category(class_id: int) -> str:
    """GTSDB's categories by look: triangles warn (danger), red-rimmed white circles forbid
    (prohibitory), blue signs order (mandatory), the rest is other."""
    shape, scheme, _ = class_look(class_id)
    if shape.startswith("triangle"):
        return "danger"
    if shape == "circle" and scheme == SCHEMES[0]:
        return "prohibitory"
    if scheme == SCHEMES[1]:
        return "mandatory"
    return "other"


def street_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    horizon = int(height * rng.uniform(0.35, 0.55))
    sky0, sky1 = rng.uniform([120, 150, 190], [200, 220, 255]), rng.uniform([170, 190, 210], [240, 245, 255])
    ramp = np.linspace(0, 1, horizon)[:, None]
    img = np.empty((height, width, 3), np.float32)
    img[:horizon] = (sky0 + (sky1 - sky0) * ramp)[:, None, :]
    ground = rng.uniform(70, 130)
    img[horizon:] = ground + rng.normal(0, 3, (height - horizon, 1, 3))
    frame = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(frame)
    x = -rng.uniform(0, 80)
    while x < width:  # buildings along the horizon
        w, h = rng.uniform(60, 220), rng.uniform(40, horizon * 0.9)
        colour = tuple(int(v) for v in rng.uniform(60, 200, 3))
        draw.rectangle((x, horizon - h, x + w, horizon), fill=colour)
        for wy in np.arange(horizon - h + 8, horizon - 10, 18):  # windows
            for wx in np.arange(x + 6, x + w - 10, 16):
                if rng.random() < 0.6:
                    draw.rectangle((wx, wy, wx + 7, wy + 9), fill=tuple(int(v * 0.6) for v in colour))
        x += w + rng.uniform(0, 30)
    cx = width * rng.uniform(0.4, 0.6)  # the road: a trapezoid to the horizon, with lane marks
    draw.polygon([(cx - 8, horizon), (cx + 8, horizon), (width * 0.95, height), (width * 0.05, height)],
                 fill=tuple(int(v) for v in rng.uniform(50, 90, 3)))
    for k in range(8):
        t0, t1 = k / 8, k / 8 + 0.05
        y0, y1 = horizon + (height - horizon) * t0 ** 1.5, horizon + (height - horizon) * t1 ** 1.5
        draw.line([(cx, y0), (cx, y1)], fill=(230, 230, 220), width=max(1, int(1 + 6 * t1)))
    for _ in range(rng.integers(2, 9)):  # trees and bushes
        tx, ty = rng.uniform(0, width), horizon + rng.uniform(-60, 40)
        r = rng.uniform(15, 70)
        draw.ellipse((tx - r, ty - 2 * r, tx + r, ty), fill=tuple(int(v) for v in rng.uniform([20, 70, 20], [80, 140, 60])))
    for _ in range(rng.integers(0, 6)):  # clutter with sign-like colours: lights, boards, cars
        bx, by = rng.uniform(0, width), rng.uniform(horizon * 0.5, height)
        s = rng.uniform(8, 60)
        colour = tuple(int(v) for v in rng.choice([(200, 30, 30), (30, 60, 200), (230, 200, 30), (240, 240, 240)]))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((bx, by, bx + s, by + s * rng.uniform(0.4, 1.5)),
                                                                 fill=colour)
    return frame.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def _free(box, taken, gap: int = 4) -> bool:
    l, t, r, b = box
    return all(r + gap <= l2 or l - gap >= r2 or b + gap <= t2 or t - gap >= b2 for l2, t2, r2, b2 in taken)


def render_frame(rng: np.random.Generator, width: int, height: int, classes: int = NUM_CLASSES):
    """One frame and its signs: (image, [(class_id, (left, top, right, bottom)), ...])."""
    frame = street_background(rng, width, height)
    count = 0 if rng.random() < EMPTY_SHARE else int(rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 6]))
    signs, taken = [], []
    for _ in range(count * 10):
        if len(signs) == count:
            break
        side = int(round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE)))))
        bw, bh = side, max(MIN_SIDE, int(round(side * rng.uniform(0.9, 1.1))))
        left = int(rng.uniform(0, width - bw))
        top = int(rng.uniform(0, max(1, height * 0.75 - bh)))
        box = (left, top, left + bw, top + bh)
        if not _free(box, taken):
            continue
        signs.append((int(rng.integers(0, classes)), box))
        taken.append(box)
    draw = ImageDraw.Draw(frame)
    for _, (left, top, right, bottom) in signs:  # poles first: no pole crosses a sign
        bw, bh = right - left, bottom - top
        draw.line([(left + bw / 2, bottom), (left + bw / 2, min(height, bottom + 3 * bh))],
                  fill=tuple(int(v) for v in rng.uniform(90, 150, 3)), width=max(1, bw // 10))
    for class_id, (left, top, right, bottom) in signs:
        bw, bh, k = right - left, bottom - top, 4  # drawn at 4x, scaled down: smooth edges
        patch = Image.new("RGBA", (bw * k, bh * k), (0, 0, 0, 0))
        draw_sign(ImageDraw.Draw(patch), class_id, (0, 0, bw * k - 1, bh * k - 1), rng.uniform(0.8, 1.15, 3))
        small = patch.resize((bw, bh), Image.BOX)
        frame.paste(small, (left, top), small)
    arr = np.asarray(frame, dtype=np.float32) * rng.uniform(0.75, 1.2) + rng.normal(0, rng.uniform(1, 6), (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), signs


def _rendered(frames: int, seed: int, width: int, height: int, classes: int):
    """Frame i's (i, image, signs) for i in 0..frames-1, each from its own generator (seed, i)."""
    for i in tqdm(range(frames), desc="synthetic scenes", unit="frame", leave=False):
        yield (i, *render_frame(np.random.default_rng([seed, i]), width, height, classes))


def generate(out: Path, frames: int = 120, seed: int = 0, width: int = 800, height: int = 480,
             fmt: str = "manifest") -> Path:
    """Write `frames` frames into `out` in layout `fmt`; returns the manifest, or the GTSDB package."""
    out = Path(out)
    if fmt == "gtsdb":
        return _gtsdb(out, frames, seed, width, height)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image, signs in _rendered(frames, seed, width, height, NUM_CLASSES):
        name = f"frames/{i:05d}.jpg"
        image.save(out / name, quality=92)
        rows += [{"path": name, "label": c, "left": b[0], "top": b[1], "right": b[2], "bottom": b[3]} for c, b in signs]
        if not signs:
            rows.append({"path": name, "label": "", "left": "", "top": "", "right": "", "bottom": ""})
    write_csv(out / "manifest.csv", pd.DataFrame(rows, columns=["path", "label", "left", "top", "right", "bottom"]))
    write_csv(out / "classes.csv", scene_classes())
    return out / "manifest.csv"


def scene_classes() -> pd.DataFrame:
    """The synthetic signs' classes (the crop default's 62: ids, names) with their categories."""
    return pd.DataFrame({"class_id": range(NUM_CLASSES), "name": packaged_names("belgiumtsc")[:NUM_CLASSES],
                         "category": [category(c) for c in range(NUM_CLASSES)]})


def _gtsdb(out: Path, frames: int, seed: int, width: int, height: int) -> Path:
    """GTSDB's layout: frames NNNNN.ppm, gt.txt (`file;leftCol;topRow;rightCol;bottomRow;ClassID`, the
    edges pixel indices, inclusive), no ReadMe.txt (the reader ships GTSRB's names and categories)."""
    root = out / "FullIJCNN2013"
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    gtsrb_classes = len(packaged_names("gtsrb"))  # the list the GTSDB reader names them by
    for i, image, signs in _rendered(frames, seed, width, height, gtsrb_classes):
        name = f"{i:05d}.ppm"
        image.save(root / name, format="PPM")
        lines += [f"{name};{l};{t};{r - 1};{b - 1};{c}" for c, (l, t, r, b) in signs]
    (root / "gt.txt").write_text("".join(line + "\n" for line in lines))
    return root
