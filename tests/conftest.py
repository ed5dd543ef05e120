"""Shared fixtures: tiny data sets in the official layout, written by the tests themselves."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv, cwd: Path | None = None):
    """`tsloc ARGV` in this process (the command's own `main`, without a new interpreter's torch import):
    its exit status and what it wrote, like subprocess.run's result."""
    import contextlib
    import io
    from types import SimpleNamespace

    from tsloc.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        os.chdir(old)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def write_ppm(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.write_bytes(b"P6 %d %d 255\n" % (width, height) + pixels.tobytes())


def gt_row(name, width, height, box, class_id) -> str:
    """A GT line in the official (swapped) convention from a true size and (l, t, r, b) box."""
    left, top, right, bottom = box
    return f"{name};{height};{width};{top};{left};{bottom};{right};{class_id}"


def write_layout(root: Path, images: dict, extra_rows: dict | None = None) -> Path:
    """images: {(split, class_id): [(name, width, height, box), ...]}; every class folder gets a csv."""
    extra_rows = extra_rows or {}
    for split in ("Training", "Testing"):
        for class_id in {c for s, c in images} | {c for s, c in extra_rows}:
            folder = root / split / f"{class_id:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            lines = [HEADER]
            for i, (name, w, h, box) in enumerate(images.get((split, class_id), [])):
                write_ppm(folder / name, w, h, seed=i)
                lines.append(gt_row(name, w, h, box, class_id))
            lines += extra_rows.get((split, class_id), [])
            (folder / f"GT-{class_id:05d}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_layout(tmp_path) -> Path:
    """Two classes, a landscape and a portrait image, a duplicated row, an empty Testing class."""
    images = {
        ("Training", 0): [("00001_00000.ppm", 40, 30, (4, 3, 36, 27)), ("00001_00001.ppm", 20, 50, (2, 5, 18, 45)),
                          ("00002_00000.ppm", 33, 33, (3, 3, 30, 30))],
        ("Training", 1): [("00005_00000.ppm", 30, 30, (3, 3, 27, 27)), ("00006_00000.ppm", 31, 30, (3, 3, 28, 27))],
        ("Testing", 0): [("00009_00000.ppm", 25, 35, (2, 3, 23, 32))],
    }
    dup = {("Training", 1): [gt_row("00005_00000.ppm", 30, 30, (3, 3, 27, 27), 1)]}
    return write_layout(tmp_path / "tiny", images, dup)


def shared_data_dir() -> Path | None:
    """The lossless copy of the real data (../shared/data/belgiumtsc), or $BELGIUMTSC_SHARED."""
    path = Path(os.environ.get("BELGIUMTSC_SHARED", REPO.parent / "shared" / "data" / "belgiumtsc"))
    return path if (path / "restore.py").exists() else None
