"""Inference on image files: classes and boxes in the pixels of each original image.

The input domain is BelgiumTSC's: one sign with some margin around it (a crop from a detector or
a person), not a whole street scene. Images are prepared exactly as for training (RGB, squashed to
the model's square input size), so boxes map back to the original by scaling alone.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data.images import open_rgb
from .data.store import normalise, to_input
from .errors import DataError

IMAGE_SUFFIXES = {".ppm", ".pgm", ".pbm", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class NoImages(DataError):
    """Nothing to predict: the folders hold no image file."""


def collect(paths: list[str]) -> list[tuple[Path, Path]]:
    """(file, name for --draw) for files given as such and image files found in folders, recursively
    (symbolic links to folders are not followed, so a link loop cannot trap the walk)."""
    out = []
    for arg in map(Path, paths):
        if arg.is_dir():
            for f in sorted(p for p in arg.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                out.append((f, f.relative_to(arg)))
        else:
            out.append((arg, Path(arg.name)))
    return out


@torch.no_grad()
def predict_batch(model, images: list[Image.Image], size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) and relative boxes (N, 4) for PIL images."""
    from .boxes import make_valid
    x = normalise(np.stack([to_input(img, size) for img in images])).to(device)
    logits, boxes = model(x)
    return torch.softmax(logits.float(), 1).cpu(), make_valid(boxes.float()).cpu()


def record(path: Path, img: Image.Image, probs: torch.Tensor, box: torch.Tensor, names: list[str], top_k: int) -> dict:
    p, ids = probs.topk(min(top_k, len(probs)))
    w, h = img.size
    left, top, right, bottom = (box * torch.tensor([w, h, w, h])).tolist()
    return {
        "path": str(path),
        "class_id": int(ids[0]),
        "class_name": names[int(ids[0])],
        "probability": round(float(p[0]), 6),
        "top_k": [{"class_id": int(i), "class_name": names[int(i)], "probability": round(float(q), 6)}
                  for q, i in zip(p, ids)],
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
    label = f"{rec['class_id']} {rec['class_name']} {100 * rec['probability']:.1f}%"
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


def predict_files(model, ckpt: dict, paths: list[str], *, top_k: int = 5, fmt: str = "jsonl",
                  draw_dir: str | None = None, batch_size: int = 32, device="cpu", out=None,
                  err=None) -> int:
    """Predict every image; unreadable files are reported on `err` and skipped. Returns how many failed.
    Images are read a batch at a time, so a folder of any size streams in bounded memory. `out` and
    `err` default to sys.stdout and sys.stderr as they are at the call (so redirection works)."""
    out, err = out or sys.stdout, err or sys.stderr
    files = collect(paths)
    if not files:
        raise NoImages(f"no image files in {', '.join(map(str, paths))} (looked for "
                       f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    model = model.eval().to(device)
    writer = Writer(fmt, out)
    names = DrawNames(draw_dir) if draw_dir else None
    failed = 0
    for start in range(0, len(files), batch_size):
        batch = []
        for path, name in files[start:start + batch_size]:
            try:
                batch.append((path, name, open_rgb(path)))
            except DataError as exc:
                print(f"tsloc predict: error: {exc}", file=err)
                failed += 1
        if not batch:
            continue
        probs, boxes = predict_batch(model, [b[2] for b in batch], ckpt["image_size"], device)
        for (path, name, img), p, b in zip(batch, probs, boxes):
            rec = record(path, img, p, b, ckpt["class_names"], top_k)
            writer.write(rec)
            if names:
                draw(img, rec, names(name))
    return failed
