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


def worktree_files() -> list[str]:
    """What `git ls-files --cached --others --exclude-standard` lists: through git, else through dulwich,
    DVC's own Git library (the lent GPU machines may have no git program; .ci/gpu makes the repository)."""
    import shutil
    import subprocess
    if shutil.which("git"):
        return subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.split("\0")
    from dulwich import porcelain
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo
    try:
        repo = Repo(str(REPO))
    except NotGitRepository:
        pytest.skip("no git program, and no Git repository here for dulwich to read")
    untracked = porcelain.status(repo, untracked_files="all").untracked
    return [p.decode() for p in repo.open_index()] + [u.decode() if isinstance(u, bytes) else u for u in untracked]


def copy_worktree(dst: Path) -> None:
    """The working tree as git would commit it (no DVC cache, no outputs it ignores) copied to `dst`."""
    import shutil
    for rel in filter(None, worktree_files()):
        src = REPO / rel
        if src.is_file() and not rel.startswith(".dvc/cache"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def png_bytes(w=60, h=40, seed=0) -> bytes:
    """A random RGB image, w x h, as PNG bytes (a request's body, an upload)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


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


# --- Shared helpers of the model, training and inference tests (imported from here, not across test modules).

STUB_BOX = (0.1, 0.2, 0.6, 0.9)
STUB_NAMES = [f"class {i}" for i in range(62)]


def stub_model(path, image_size=64, winner=3):
    """A real checkpoint whose heads ignore the image: class `winner` first, class i+1 next, and STUB_BOX."""
    import torch

    from tsloc.crops import checkpoint
    from tsloc.crops.model import build_model
    net = build_model("mobilenet_v2", "none", len(STUB_NAMES), image_size=image_size).eval()
    with torch.no_grad():
        net.classifier[1].weight.zero_()
        net.classifier[1].bias.copy_(-torch.arange(62, dtype=torch.float32) * 0.1)
        net.classifier[1].bias[winner] = 5.0
        net.start_boxes_at(torch.tensor(STUB_BOX))
    checkpoint.save(path, checkpoint.make(net, net.state_dict(), backbone="mobilenet_v2", image_size=image_size,
                                          class_names=STUB_NAMES, epoch=1, loss_weight=100.0))
    return path


def tiny_data(n=40, size=48, seed=0):
    """n random uint8 images, labels of 3 classes and valid relative boxes."""
    import torch

    from tsloc.boxes import make_valid
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = torch.as_tensor(rng.integers(0, 3, n))
    boxes = make_valid(torch.as_tensor(rng.uniform(0.05, 0.95, (n, 4)), dtype=torch.float32))
    return images, labels, boxes


def feature_subsets(seed=2, n=40, split_at=30):
    """train / valid subsets of random 1280-wide features (the cached path) for 3 classes."""
    from tsloc.crops.batches import Batches, features_source
    _, labels, boxes = tiny_data(n=n)
    feats = np.random.default_rng(seed).normal(size=(n, 1280)).astype(np.float32)
    return {"train": Batches(features_source(feats[:split_at], boxes[:split_at], "cpu"), labels[:split_at],
                             boxes[:split_at]),
            "valid": Batches(features_source(feats[split_at:], boxes[split_at:], "cpu"), labels[split_at:],
                             boxes[split_at:])}


def heads_only(num_classes=3, seed=0):
    """A SignNet without a backbone (it takes pooled 1280-wide features), seeded."""
    import torch

    from tsloc.crops.model import SignNet
    torch.manual_seed(seed)
    return SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=num_classes)


def compose(output: Path, conf: Path, overrides: list[str]) -> dict:
    """Write what `dvc exp run -S ...` writes to params.yaml, with DVC's function; return it."""
    import yaml
    from dvc.utils.hydra import compose_and_dump
    compose_and_dump(output, str(Path(conf).resolve()), None, "config", str(Path(conf).resolve()), overrides)
    return yaml.safe_load(Path(output).read_text())


def random_model(tmp_path, box="pooled"):
    """A random MobileNetV2 model with non-trivial box heads, saved and read back: (model, checkpoint)."""
    import torch

    from tsloc.crops import checkpoint
    from tsloc.crops.model import build_model
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", len(STUB_NAMES), image_size=64, box=box).eval()
    with torch.no_grad():  # non-trivial heads
        net.box[-1].weight.normal_(0, 0.05)
        net.box[-1].bias.copy_(torch.tensor([10.0, 12.0, 50.0, 55.0]))
    path = tmp_path / "m.pt"
    checkpoint.save(path, checkpoint.make(net, net.state_dict(), backbone="mobilenet_v2", image_size=64,
                                          class_names=STUB_NAMES, epoch=1, loss_weight=100.0))
    return checkpoint.load(path)


def reference_answers(model, ckpt, x):
    """What an export must answer for uint8 images (N, S, S, 3), computed by hand from the checkpoint."""
    import torch

    from tsloc.boxes import make_valid
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits, boxes = model((x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    return torch.softmax(logits, 1), make_valid(boxes)
