"""Offline stand-ins for the data sets, written in each format's exact layout (`generate(..., fmt=)`):
BelgiumTSC (the default), GTSRB, or a manifest of one's own crops, so every reader is tested end to end.

62 classes told apart only by looking: shape (6) x colour scheme (4) x inner glyph (3). Class
frequencies follow the real sets' (a long tail; 9 classes empty in Testing). Each physical sign
(class + pole number) has about 3 views with slightly different scale, placement and light, and a
few signs have views in both Training and Testing, as in the real data. The GT csv files swap the
axes as the real ones do, and repeat a few rows, so the one reader serves both.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from ..errors import DataError

# Unique images per class in the real sets (Training 4575, Testing 2520).
REAL_TRAIN = (15, 110, 13, 15, 15, 11, 18, 157, 27, 18, 21, 7, 18, 90, 43, 9, 9, 79, 81, 231, 42, 43,
              375, 15, 48, 42, 6, 18, 125, 33, 37, 63, 316, 12, 46, 60, 18, 98, 285, 196, 242, 148, 35,
              30, 48, 74, 44, 147, 11, 12, 15, 27, 27, 199, 118, 12, 95, 78, 15, 42, 9, 282)
REAL_TEST = (6, 27, 7, 6, 12, 3, 6, 90, 12, 0, 28, 0, 3, 39, 15, 0, 12, 183, 122, 163, 3, 45, 61, 15, 13,
             3, 0, 9, 51, 28, 37, 86, 422, 0, 9, 154, 0, 31, 213, 99, 48, 11, 9, 6, 3, 84, 6, 31, 0, 3,
             0, 3, 0, 24, 48, 15, 33, 41, 9, 17, 11, 105)
NUM_CLASSES = 62
SHAPES = ("circle", "triangle", "triangle_down", "square", "diamond", "octagon")
SCHEMES = (  # (fill, border, glyph)
    ((245, 245, 240), (200, 20, 30), (20, 20, 20)),
    ((20, 70, 170), (240, 240, 240), (240, 240, 240)),
    ((240, 200, 20), (20, 20, 20), (20, 20, 20)),
    ((200, 20, 30), (240, 240, 240), (240, 240, 240)),
)
GLYPHS = ("dot", "bar", "cross")
SHARED_SIGNS = 3  # physical signs with views in both Training and Testing
SPLITS_INDEX = {"Training": 0, "Testing": 1}


def class_look(class_id: int) -> tuple[str, tuple, str]:
    """(shape, colour scheme, glyph) of a class: a unique combination for each of the 62."""
    return (SHAPES[class_id % 6], SCHEMES[(class_id // 6) % 4], GLYPHS[class_id // 24])


def class_counts(size: int, train_profile=REAL_TRAIN, test_profile=REAL_TEST) -> tuple[list[int], list[int]]:
    """Images per class in Training and Testing, shaped like the profiles (the real sets'), `size` in all."""
    scale = size / (sum(train_profile) + sum(test_profile))
    train = [max(2, round(n * scale)) for n in train_profile]
    test = [0 if n == 0 else max(1, round(n * scale)) for n in test_profile]
    return train, test


def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    l, t, r, b = box
    cx, cy, w, h = (l + r) / 2, (t + b) / 2, r - l, b - t
    if shape == "circle":
        return None
    if shape == "triangle":
        return [(cx, t), (r, b), (l, b)]
    if shape == "triangle_down":
        return [(l, t), (r, t), (cx, b)]
    if shape == "square":
        return [(l, t), (r, t), (r, b), (l, b)]
    if shape == "diamond":
        return [(cx, t), (r, cy), (cx, b), (l, cy)]
    # octagon
    return [(cx + w / 2 * math.cos(a), cy + h / 2 * math.sin(a))
            for a in (math.pi / 8 + k * math.pi / 4 for k in range(8))]


def _shrink(box, f):
    l, t, r, b = box
    dx, dy = (r - l) * f, (b - t) * f
    return (l + dx, t + dy, r - dx, b - dy)


def draw_sign(draw: ImageDraw.ImageDraw, class_id: int, box, tint: np.ndarray) -> None:
    shape, (fill, border, ink), glyph = class_look(class_id)
    fill, border, ink = (tuple(int(np.clip(c * t, 0, 255)) for c, t in zip(col, tint))
                         for col in (fill, border, ink))
    inner = _shrink(box, 0.12 if shape not in ("triangle", "triangle_down") else 0.16)
    for b, colour in ((box, border), (inner, fill)):
        poly = _polygon(shape, b)
        if poly is None:
            draw.ellipse(b, fill=colour)
        else:
            draw.polygon(poly, fill=colour)
    l, t, r, b = box
    cx, cy, w, h = (l + r) / 2, (t + b) / 2, r - l, b - t
    if shape == "triangle":
        cy = t + 0.62 * h
    elif shape == "triangle_down":
        cy = t + 0.38 * h
    s = 0.13 * min(w, h)
    if glyph == "dot":
        draw.ellipse((cx - s, cy - s, cx + s, cy + s), fill=ink)
    elif glyph == "bar":
        draw.rectangle((cx - 2.2 * s, cy - 0.55 * s, cx + 2.2 * s, cy + 0.55 * s), fill=ink)
    else:
        draw.rectangle((cx - 1.8 * s, cy - 0.45 * s, cx + 1.8 * s, cy + 0.45 * s), fill=ink)
        draw.rectangle((cx - 0.45 * s, cy - 1.8 * s, cx + 0.45 * s, cy + 1.8 * s), fill=ink)


def render_view(rng: np.random.Generator, class_id: int, sign: dict) -> tuple[Image.Image, tuple]:
    """One photo of a physical sign: returns the image and its box (left, top, right, bottom)."""
    scale = sign["size"] * rng.uniform(0.85, 1.18)
    bw = max(18, round(scale))
    bh = max(18, round(scale * sign["aspect"] * rng.uniform(0.95, 1.05)))
    # ~10% margin per side, jittered, so the sign sits off-centre; sometimes much more on one axis.
    m = rng.uniform(0.04, 0.17, size=4)
    if rng.random() < 0.15:
        m[rng.integers(0, 2) * 2 + rng.integers(0, 2)] += rng.uniform(0.2, 0.6)
    ml, mr = round(bw * m[0]) + 1, round(bw * m[1]) + 1
    mt, mb = round(bh * m[2]) + 1, round(bh * m[3]) + 1
    width, height = bw + ml + mr, bh + mt + mb
    # Background: a gradient between two colours plus a few soft blobs.
    c0, c1 = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    ramp = np.linspace(0, 1, height if rng.random() < 0.5 else width)
    grad = c0 + (c1 - c0) * ramp[:, None]
    bg = (np.repeat(grad[:, None, :], width, 1) if len(ramp) == height
          else np.repeat(grad[None, :, :], height, 0))
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rad = rng.uniform(0.1, 0.4) * max(width, height)
        draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=tuple(int(v) for v in rng.uniform(20, 235, 3)))
    img = img.filter(ImageFilter.GaussianBlur(max(width, height) / 15))
    # The sign, drawn at 4x and scaled down for smooth edges.
    k = 4
    big = img.resize((width * k, height * k), Image.NEAREST)
    box = (ml, mt, ml + bw, mt + bh)
    draw_sign(ImageDraw.Draw(big), class_id, tuple(v * k for v in box), sign["tint"])
    img = big.resize((width, height), Image.BOX)
    radius = rng.uniform(0, 1.2) * scale / 80
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(img, dtype=np.float32) * sign["light"] * rng.uniform(0.85, 1.15)
    arr += rng.normal(0, rng.uniform(0, 8), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), box


def _plan(size: int, rng: np.random.Generator, train_profile=REAL_TRAIN,
          test_profile=REAL_TEST) -> dict[str, list[tuple[int, int, dict]]]:
    """For each split, (class, pole, sign) of every view: signs of 2-4 views each."""
    train_n, test_n = class_counts(size, train_profile, test_profile)
    next_pole = [int(rng.integers(100, 900))]

    def new_sign(class_id):
        next_pole[0] += int(rng.integers(1, 4))
        return {"pole": next_pole[0], "size": float(np.exp(rng.uniform(np.log(22), np.log(210)))),
                "aspect": float(rng.uniform(0.85, 1.2)), "tint": rng.uniform(0.8, 1.1, 3),
                "light": float(rng.uniform(0.6, 1.3))}

    plan = {"Training": [], "Testing": []}
    for split, counts in (("Training", train_n), ("Testing", test_n)):
        for c, n in enumerate(counts):
            while n > 0:
                views = min(n, int(rng.integers(2, 5)))
                sign = new_sign(c)
                plan[split] += [(c, sign["pole"], sign)] * views
                n -= views
    # A few physical signs seen in both sets (the real sets share 6): move a test sign's pole and
    # look onto a training sign of the same class.
    test_classes = sorted({c for c, _, _ in plan["Testing"]})
    for c in rng.choice(test_classes, size=min(SHARED_SIGNS, len(test_classes)), replace=False) if test_classes else ():
        s_test = next(s for cc, _, s in plan["Testing"] if cc == c)
        s_train = next(s for cc, _, s in plan["Training"] if cc == c)
        plan["Testing"] = [(cc, s_train["pole"], s_train) if s is s_test else (cc, p, s)
                           for cc, p, s in plan["Testing"]]
    return plan


class _BelgiumTSC:
    """The official BelgiumTSC layout; the GT files swap the axes and repeat a few rows, as the real ones do."""
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"

    def __init__(self, out: Path, num_classes: int):
        self.out, self.rows = out, {(s, c): [] for s in SPLITS_INDEX for c in range(num_classes)}

    def add(self, split, c, pole, view, img, box):
        left, top, right, bottom = box
        name = f"{pole:05d}_{view:05d}.ppm"
        folder = self.out / split / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / name, format="PPM")
        self.rows[(split, c)].append(f"{name};{img.height};{img.width};{top};{left};{bottom};{right};{c}")

    def finish(self, rng, duplicate_rows):
        dup_classes = [key for key, r in self.rows.items() if key[0] == "Training" and r]
        for k in range(duplicate_rows):
            key = dup_classes[int(rng.integers(len(dup_classes)))]
            self.rows[key].append(self.rows[key][k % len(self.rows[key])])
        for (split, c), lines in self.rows.items():
            folder = self.out / split / f"{c:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"GT-{c:05d}.csv").write_text("\n".join([self.header] + lines) + "\n")


class _GTSRB:
    """GTSRB as its three archives extract: training by class and track, test images numbered with the
    labels in GT-final_test.csv beside GTSRB/ (axes not swapped)."""
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2"

    def __init__(self, out: Path, num_classes: int):
        self.out, self.train = out, {c: [] for c in range(num_classes)}
        self.test, self.test_labels = [], []

    def add(self, split, c, pole, view, img, box):
        row = f"{img.width};{img.height};" + ";".join(str(v) for v in box)
        if split == "Training":
            folder = self.out / "GTSRB" / "Final_Training" / "Images" / f"{c:05d}"
            name = f"{pole:05d}_{view:05d}.ppm"
            self.train[c].append(f"{name};{row};{c}")
        else:
            folder = self.out / "GTSRB" / "Final_Test" / "Images"
            name = f"{len(self.test):05d}.ppm"
            self.test.append(f"{name};{row}")
            self.test_labels.append(f"{name};{row};{c}")
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / name, format="PPM")

    def finish(self, rng, duplicate_rows):
        for c, lines in self.train.items():
            folder = self.out / "GTSRB" / "Final_Training" / "Images" / f"{c:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"GT-{c:05d}.csv").write_text("\n".join([self.header + ";ClassId"] + lines) + "\n")
        test = self.out / "GTSRB" / "Final_Test" / "Images"
        test.mkdir(parents=True, exist_ok=True)
        (test / "GT-final_test.test.csv").write_text("\n".join([self.header] + self.test) + "\n")
        (self.out / "GT-final_test.csv").write_text("\n".join([self.header + ";ClassId"] + self.test_labels) + "\n")


class _Manifest:
    """A manifest of one's own crops: PNG images, every tenth a JPEG stored sideways with an EXIF
    orientation (as phones do), labels as class names (classes.csv beside it), groups, no subset."""

    def __init__(self, out: Path, num_classes: int):
        self.out, self.lines = out, []
        self.names = [class_name(c) for c in range(num_classes)]
        (out / "images").mkdir(parents=True, exist_ok=True)

    def add(self, split, c, pole, view, img, box):
        i = len(self.lines)
        if i % 10 == 9:
            name = f"images/{i:05d}.jpg"
            exif = Image.Exif()
            exif[0x0112] = 6  # shown turned 90 degrees clockwise: the pixels are stored turned back
            img.transpose(Image.Transpose.ROTATE_90).save(self.out / name, quality=95, exif=exif)
        else:
            name = f"images/{i:05d}.png"
            img.save(self.out / name)
        self.lines.append(f"{name},{self.names[c]},{','.join(str(v) for v in box)},sign-{pole}")

    def finish(self, rng, duplicate_rows):
        (self.out / "classes.csv").write_text(
            "class_id,name\n" + "".join(f"{c},{n}\n" for c, n in enumerate(self.names)))
        (self.out / "manifest.csv").write_text(
            "path,label,left,top,right,bottom,group\n" + "".join(line + "\n" for line in self.lines))


WRITERS = {"belgiumtsc": _BelgiumTSC, "gtsrb": _GTSRB, "manifest": _Manifest}
# Images per class of each format's synthetic twin (training, test): BelgiumTSC's real counts; GTSRB's
# 43 classes, all of them tested; a manifest of 20 classes with no test side (the split carves one).
PROFILES = {"belgiumtsc": (REAL_TRAIN, REAL_TEST),
            "gtsrb": (REAL_TRAIN[:43], tuple(max(n, 6) for n in REAL_TEST[:43])),
            "manifest": (tuple(a + b for a, b in zip(REAL_TRAIN[:20], REAL_TEST[:20])), (0,) * 20)}


def class_name(class_id: int) -> str:
    """A readable name for a synthetic class: its look."""
    shape, scheme, glyph = class_look(class_id)
    colours = ("white-red", "blue", "yellow", "red")[SCHEMES.index(scheme)]
    return f"{shape} {colours} {glyph}"


def generate(out: Path, size: int = 1800, seed: int = 0, duplicate_rows: int = 2, fmt: str = "belgiumtsc") -> None:
    """Write a synthetic data set in format `fmt` into `out`; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    train_profile, test_profile = PROFILES[fmt]
    if size < 2 * len(train_profile):
        raise DataError(f"data.synthetic.size must be at least {2 * len(train_profile)} for the {fmt} twin "
                        f"(2 images per class, {len(train_profile)} classes), got {size}")
    plan = _plan(size, rng, train_profile, test_profile)
    writer = WRITERS[fmt](Path(out), len(train_profile))
    jobs = [(split, i, item) for split, items in plan.items() for i, item in enumerate(items)]
    views: dict[tuple[str, int, int], int] = {}
    for split, i, (c, pole, sign) in tqdm(jobs, desc="synthetic images", unit="img", leave=False):
        view_rng = np.random.default_rng([seed, i, SPLITS_INDEX[split]])
        img, box = render_view(view_rng, c, sign)
        v = views.get((split, c, pole), 0)
        views[(split, c, pole)] = v + 1
        writer.add(split, c, pole, v, img, box)
    writer.finish(rng, duplicate_rows)
