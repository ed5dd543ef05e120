"""Inference on image files: classes and boxes in the pixels of each original image, from the
`.pt` model or an ONNX export (tsloc.crops.inference), with decoding in parallel threads ahead of inference.

The input domain is BelgiumTSC's: one sign with some margin around it (a crop from a detector or
a person), not a whole street scene. Images are prepared exactly as for training (RGB, squashed to
the model's square input size), so boxes map back to the original by scaling alone.
"""
from __future__ import annotations

import csv
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from ..data.images import load_image, to_input
from ..errors import DataError

IMAGE_SUFFIXES = {".ppm", ".pgm", ".pbm", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class NoImages(DataError):
    """Nothing to predict: the folders hold no image file."""


STDIN = Path("-")  # an image read from standard input (`tsloc predict - < sign.jpg`)


def _expanded(paths: list[str]) -> list[Path]:
    """The arguments, with a pattern the shell left unexpanded (quoted, or on a shell that does not
    expand: `"crops/*.png"`, `"crops/**/*.jpg"`) expanded here; a pattern that matches nothing stays,
    to be named as a missing file."""
    import glob
    out = []
    for arg in paths:
        matches = sorted(glob.glob(arg, recursive=True)) if glob.has_magic(arg) and not Path(arg).exists() else []
        out += [Path(m) for m in matches] or [Path(arg)]
    return out


def collect(paths: list[str]) -> list[tuple[Path, Path]]:
    """(file, name for --draw) for files given as such and image files found in folders, recursively
    (symbolic links to folders are not followed, so a link loop cannot trap the walk); patterns are
    expanded (`_expanded`); `-` is standard input."""
    out = []
    for arg in _expanded(paths):
        if arg == STDIN:
            out.append((arg, Path("stdin.png")))
        elif arg.is_dir():
            for f in sorted(p for p in arg.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                out.append((f, f.relative_to(arg)))
        else:
            out.append((arg, Path(arg.name)))
    return out


MAX_BATCH = 256  # images per inference call at most: memory stays bounded whatever --batch-size asks
AHEAD = 2        # batches decoded ahead of the one being inferred


class Item(NamedTuple):
    path: Path | None     # None: an image given as bytes, a PIL image or an array
    name: Path | None     # where --draw writes it, relative to the --draw folder
    size: tuple[int, int]  # the upright image's width and height: boxes are scaled back to these
    pixels: np.ndarray    # (S, S, 3) uint8, as the model sees it
    image: Image.Image | None  # the decoded image, kept only for --draw


def prepare(source, size: int, *, name: Path | None = None, label: str | None = None, keep: bool = False) -> Item:
    """One image (a path, bytes, a PIL image or an array: tsloc.data.images.load_image) decoded,
    upright and squashed to the model's input; `label` names it in errors when it is not a path."""
    if isinstance(source, Path) and source == STDIN:
        img, path = load_image(sys.stdin.buffer.read(), "standard input"), STDIN
    else:
        img = load_image(source, label)
        path = Path(source) if isinstance(source, (str, Path)) else None
    return Item(path, name, img.size, to_input(img, size), img if keep else None)


def decoded_batches(files: list[tuple[Path, Path]], size: int, batch_size: int, *, threads: int = 4,
                    keep_images: bool = False):
    """Yield each batch of `files` decoded and squashed, as a list of Item or DataError (an unreadable
    file), in order. `threads` > 0 decode in parallel, up to AHEAD batches ahead of the caller, so
    decoding overlaps inference and memory holds at most AHEAD + 1 batches; 0 decodes in the caller."""
    starts = range(0, len(files), batch_size)

    def run(path, name):
        try:
            return prepare(path, size, name=name, keep=keep_images)
        except DataError as exc:
            return exc

    if threads <= 0:
        for start in starts:
            yield [run(f, n) for f, n in files[start:start + batch_size]]
        return
    with ThreadPoolExecutor(threads) as pool:
        pending, queue = deque(), iter(starts)

        def submit():
            start = next(queue, None)
            if start is not None:
                pending.append([pool.submit(run, f, n) for f, n in files[start:start + batch_size]])
        for _ in range(AHEAD + 1):
            submit()
        while pending:
            batch = [f.result() for f in pending.popleft()]
            yield batch  # while the caller works on it, the next AHEAD batches decode
            submit()


def record(path: Path | None, size: tuple[int, int], probs: np.ndarray, box: np.ndarray, names: list[str],
           top_k: int, min_probability: float = 0.0) -> dict:
    """An image's answer. Under `min_probability` the class is null (not one of the known signs, or
    not sure which) while the probability and top-k stay: a caller tells a confident answer from a guess."""
    ids = np.argsort(-probs, kind="stable")[:top_k]
    w, h = size
    left, top, right, bottom = (box.astype(np.float64) * [w, h, w, h]).tolist()
    known = float(probs[ids[0]]) >= min_probability
    return {
        "path": None if path is None else str(path),
        "class_id": int(ids[0]) if known else None,
        "class_name": names[int(ids[0])] if known else None,
        "probability": round(float(probs[ids[0]]), 6),
        "top_k": [{"class_id": int(i), "class_name": names[int(i)], "probability": round(float(probs[i]), 6)}
                  for i in ids],
        "box": [round(v, 2) for v in (left, top, right, bottom)],
    }


class DrawNames:
    """Where --draw writes each picture: `<name>.png` under the folder, or `<name>-1.png`, `-2`, ... when
    another image of this run took that name (a.jpg and a.png) or a file of that name exists already:
    nothing is overwritten."""

    def __init__(self, folder: str | Path):
        self.folder, self.taken = Path(folder), set()

    def __call__(self, name: Path) -> Path:
        base, k = name.with_suffix(""), 0
        while True:
            out = self.folder / (f"{base}.png" if k == 0 else f"{base}-{k}.png")
            if out not in self.taken and not out.exists():
                self.taken.add(out)
                return out
            k += 1


def draw(img: Image.Image, rec: dict, out: Path) -> None:
    img = img.copy()
    d = ImageDraw.Draw(img)
    width = max(1, round(min(img.size) / 60))
    d.rectangle(rec["box"], outline=(255, 0, 0), width=width)
    label = (f"{rec['class_id']} {rec['class_name']}" if rec["class_id"] is not None else "unknown sign") + \
        f" {100 * rec['probability']:.1f}%"
    d.text((2, 2), label, fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


CSV_FIELDS = ["path", "class_id", "class_name", "probability", "left", "top", "right", "bottom",
              "top_k_ids", "top_k_names", "top_k_probabilities"]


class Writer:
    """jsonl: one JSON object per line; csv: a header, then one row per image."""

    def __init__(self, fmt: str, stream=None):
        self.fmt, self.stream = fmt, stream or sys.stdout
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, CSV_FIELDS)
            self.csv.writeheader()

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(rec) + "\n")
            return
        left, top, right, bottom = rec["box"]
        self.csv.writerow({
            "path": rec["path"], "class_id": rec["class_id"], "class_name": rec["class_name"],
            "probability": rec["probability"], "left": left, "top": top, "right": right, "bottom": bottom,
            "top_k_ids": "|".join(str(t["class_id"]) for t in rec["top_k"]),
            "top_k_names": "|".join(t["class_name"] for t in rec["top_k"]),
            "top_k_probabilities": "|".join(str(t["probability"]) for t in rec["top_k"]),
        })


def predict_files(backend, paths: list[str], *, top_k: int = 5, min_probability: float = 0.0, fmt: str = "jsonl",
                  draw_dir: str | None = None, batch_size: int = 32, threads: int = 4, out=None, err=None) -> int:
    """Predict every image with `backend` (tsloc.crops.inference.load_backend); unreadable files are reported on
    `err` and skipped. Returns how many failed. Images are decoded a few batches at a time (in parallel,
    ahead of inference), so a folder of any size streams in bounded memory. `out` and `err` default to
    sys.stdout and sys.stderr as they are at the call (so redirection works)."""
    out, err = out or sys.stdout, err or sys.stderr
    files = collect(paths)
    if not files:
        raise NoImages(f"no image files in {', '.join(map(str, paths))} (looked for "
                       f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    if not 1 <= batch_size <= MAX_BATCH:
        raise DataError(f"--batch-size must be between 1 and {MAX_BATCH} (memory stays bounded), not {batch_size}")
    meta = backend.meta
    writer = Writer(fmt, out)
    names = DrawNames(draw_dir) if draw_dir else None
    failed = 0
    for batch in decoded_batches(files, meta["image_size"], batch_size, threads=threads, keep_images=bool(names)):
        for e in (b for b in batch if isinstance(b, DataError)):
            print(f"tsloc predict: error: {e}", file=err)
            failed += 1
        items = [b for b in batch if isinstance(b, Item)]
        if not items:
            continue
        probs, boxes = backend(np.stack([it.pixels for it in items]))
        for item, p, b in zip(items, probs, boxes):
            rec = record(item.path, item.size, p, b, meta["class_names"], top_k, min_probability)
            writer.write(rec)
            if names:
                draw(item.image, rec, names(item.name))
    return failed
