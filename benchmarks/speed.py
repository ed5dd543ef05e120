"""Side-by-side timing: the notebook's training loop against this project's pipeline, in one run.

    python benchmarks/speed.py --data ../belgiumtsc [--epochs 20] [--subset 300] [--backbone mobilenet_v2 --size 128]

(a) A faithful re-implementation of the notebook's loop: per-sample PIL decode through pandas
    `.loc`, a mask resized with the image, the box read back from the mask, normalisation, and a
    full backbone forward for every image in every epoch, for train, valid and test (the notebook
    evaluates all three each epoch). Timed on `--subset` images of one epoch and extrapolated to
    all images and `--epochs` epochs (labelled as such).
(b) This project from raw files to a trained model in the notebook's configuration (frozen
    backbone, no augmentation, `--epochs` epochs): ingest, split, features, train, each the real
    stage function, in a scratch folder; the median of `--repeats` runs.
Then the ratio, how close (b) is to its floor (one backbone forward per image), images per second
for inference (a batch, single images) and the peak memory of this process.

    python benchmarks/speed.py --device cuda [--size 144 --batch 128 --images 4096] [--compile]
    python benchmarks/speed.py --device cpu --backbone convnet --size 48 --batch 128 --blocks -1   # the small recipe's

With --device, instead: the training loop's images per second (the best recipe's work: last 8
blocks fine-tuned, spatial box head, augmentation on the device; `--backbone`, `--blocks`: another network) and inference images per second,
at fp32 and at train.precision auto, side by side on synthetic images (no data needed).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
import yaml
from PIL import Image

import importlib
from tsloc.data.belgiumtsc import NUM_CLASSES, SPLITS, read_dataset
from tsloc.weights import IMAGENET_MEAN, IMAGENET_STD
from tsloc.crops.model import build_model


def notebook_frame(root: Path) -> pd.DataFrame:
    """The notebook's metadata: the GT rows as they are (duplicates kept), paths per row."""
    frames = []
    for split in SPLITS:
        for csv in sorted((root / split).glob("*/GT-*.csv")):
            df = pd.read_csv(csv, sep=";")
            df["Filepath"] = [str(csv.parent / f) for f in df["Filename"]]
            df["split"] = split
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def notebook_item(df: pd.DataFrame, idx: int, size: int):
    """One sample the notebook's way (its `LoadDataset.__getitem__`)."""
    img = Image.open(df.loc[idx, "Filepath"]).convert("RGB")
    x1, y1, x2, y2 = df.loc[idx, ["Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"]].astype(int)
    mask = np.zeros(img.size).T
    mask[x1:x2, y1:y2] = 1.0
    mask = Image.fromarray(mask)
    img, mask = TF.to_tensor(img), TF.to_tensor(mask)
    img = TF.resize(img, [size, size])
    mask = TF.resize(mask, [size, size])
    img = TF.normalize(img, IMAGENET_MEAN, IMAGENET_STD)
    m = mask.numpy()[0] > 0
    hi, vi = np.where(np.any(m, axis=0))[0], np.where(np.any(m, axis=1))[0]
    box = np.array([vi[0], hi[0], vi[-1] + 1, hi[-1] + 1], dtype=np.float32) if len(hi) else np.zeros(4, np.float32)
    return img, int(df.loc[idx, "ClassId"]), torch.from_numpy(box)


def time_notebook(df: pd.DataFrame, subset: int, size: int, backbone: str, batch: int = 32) -> float:
    """Seconds per image per epoch of the notebook's loop (training pass: forward, backward, step)."""
    # The notebook's plain model: contiguous (NCHW) tensors, no folded BatchNorm.
    model = build_model(backbone, "none", NUM_CLASSES, image_size=size).to(memory_format=torch.contiguous_format)
    model.train()
    for m in model.backbone.modules():  # the notebook's model.train() also trains the frozen BatchNorms
        m.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    idx = np.random.default_rng(0).permutation(len(df))[:subset]
    start = time.perf_counter()
    for b in range(0, len(idx), batch):
        items = [notebook_item(df, int(i), size) for i in idx[b:b + batch]]
        if len(items) < 2:
            continue
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([it[1] for it in items])
        boxes = torch.stack([it[2] for it in items])
        logits, out = model.heads(model.backbone(x))
        loss = F.cross_entropy(logits, y) + F.l1_loss(out * size, boxes, reduction="sum") / model.loss_weight
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / len(idx)


def time_project(data: Path, epochs: int, size: int, backbone: str, repo: Path) -> dict:
    """Seconds for ingest, split, features, train in a scratch folder (the real stage functions)."""
    work = Path(tempfile.mkdtemp(prefix="tsloc-bench-"))
    try:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["data"].update(source="local", path=str(data.resolve()), image_size=size)
        params["model"].update(backbone=backbone, weights="imagenet" if backbone == "mobilenet_v2" else "none",
                               finetune_blocks=0)
        params["train"].update(epochs=epochs, augment={**params["train"]["augment"], "enabled": False})
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(work)
        times = {}
        try:
            for stage in ("ingest", "split", "features", "train"):
                t = time.perf_counter()
                importlib.import_module(f"tsloc.pipeline.{stage}").run()
                times[stage] = time.perf_counter() - t
        finally:
            os.chdir(cwd)
        return times
    finally:
        shutil.rmtree(work, ignore_errors=True)


def time_inference(files: list[str], size: int, backbone: str) -> tuple[float, float]:
    """`tsloc predict` from image files to records: images per second in batches of 32 and one by one."""
    from tsloc.data.belgiumtsc import class_names
    from tsloc.crops.inference import TorchBackend
    from tsloc.serving.predict import predict_files
    model = build_model(backbone, "none", NUM_CLASSES, image_size=size).eval()
    backend = TorchBackend(model, {"image_size": size, "class_names": class_names()})
    rates = []
    for batch in (32, 1):
        subset = files if batch > 1 else files[:64]
        with open(os.devnull, "w") as null:
            t = time.perf_counter()
            predict_files(backend, subset, batch_size=batch, out=null)
            rates.append(len(subset) / (time.perf_counter() - t))
    return rates[0], rates[1]


def timed(step, device: torch.device, repeats: int = 1) -> float:
    """Seconds for `repeats` calls of `step` after one warm-up call, with the device synchronised."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return time.perf_counter() - t


def time_device(device: str, size: int, batch: int, images: int, epochs: int = 2, compiled: bool = False,
                precisions: list[str] | None = None, blocks: int = 8, backbone: str = "mobilenet_v2") -> None:
    """Training and inference throughput on `device` at fp32 and at the precision auto chooses (or at
    each of `precisions`); with `compiled`, fp32 with the step compiled too (train.compile: CUDA graphs
    on a GPU), its compiling in the warm-up epoch."""
    from tsloc.crops.loop import compile_step, evaluate, train_one_epoch
    from tsloc.device import autotuned, select_device
    from tsloc.crops.runtime import Runtime, resolve_precision
    dev = select_device(device)
    precisions = precisions or ["fp32", resolve_precision("auto", dev)]
    variants = [(p, False) for p in dict.fromkeys(precisions)]
    variants += [("fp32", True)] if compiled else []
    data = _random_images(size, images)
    print(f"# {dev}, {size} px, batch {batch}, {images} images, {backbone} ("
          f"{'all' if blocks == -1 else blocks} blocks fine-tuned, spatial head, augmentation)")
    for precision, compile_it in variants:
        rt = Runtime(dev, precision)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        net, train, plain, optimizer, gen = _training_setup(dev, data, batch, epochs, blocks, backbone)
        scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
        step = compile_step(net, rt) if compile_it else net
        with autotuned(dev):  # as fit trains: on a GPU TF32 and cuDNN's autotuner
            train_s = timed(lambda: train_one_epoch(step, net, train, batch, optimizer, rt, scaler=scaler,
                                                    generator=gen), dev, epochs)
            infer_s = timed(lambda: evaluate(net, plain, batch, rt), dev)
        peak = (f", GPU memory {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB at most (the image store's "
                f"{data[0].nbytes / 2**20:.0f} in it)") if dev.type == "cuda" else ""
        print(f"{precision}{', compiled' if compile_it else ''}: training {epochs * images / train_s:.0f} images/s, "
              f"inference {images / infer_s:.0f} images/s{peak}")
        del net, train, plain, optimizer, step  # freed before the next variant's peak is measured


def _random_images(size: int, images: int) -> tuple:
    """`images` random uint8 images at `size` px, their labels and boxes: (store, labels, boxes)."""
    from tsloc.boxes import make_valid
    rng = np.random.default_rng(0)
    store = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    labels = torch.as_tensor(rng.integers(0, NUM_CLASSES, images))
    boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (images, 4)), dtype=torch.float32))
    return store, labels, boxes


def _training_setup(dev: torch.device, data: tuple, batch: int, epochs: int, blocks: int, backbone: str):
    """The best recipe's training on `data` (_random_images): (objective, augmented batches, plain
    batches, optimiser, generator), the same for every variant timed or profiled."""
    from tsloc.crops.batches import Batches, images_source
    from tsloc.crops.loop import make_optimizer
    from tsloc.crops.losses import Objective
    from tsloc.params import TrainParams
    store, labels, boxes = data
    images, size = store.shape[:2]
    aug = {"margin": 0.45, "rotation": 10, "color": 0.3, "blur": 0.3, "recrop": 0.3}
    torch.manual_seed(0)
    model = build_model(backbone, "none", NUM_CLASSES, image_size=size, trainable_blocks=blocks, box="spatial").to(dev)
    gen = torch.Generator().manual_seed(0)
    source = images_source(store, boxes, dev, aug, gen)  # one copy of the store: augmented only when training
    train, plain = Batches(source, labels, boxes), Batches(source, labels, boxes)
    net = Objective(model, torch.ones(NUM_CLASSES), image_size=size, box_loss="l1+giou", balance="fixed").to(dev)
    optimizer, _ = make_optimizer(net, TrainParams(lr=1e-3, optimizer="adamw", epochs=epochs), images // batch)
    return net, train, plain, optimizer, gen


def profile_device(device: str, size: int, batch: int, steps: int, blocks: int = 8,
                   backbone: str = "mobilenet_v2") -> dict:
    """What bounds one fp32 training step (eager) of the best recipe: `steps` steps under torch.profiler
    after a warm-up epoch (profiling.profile_pass). The GPU issue's step at batch 32 was launch-bound:
    this says by what, without another GPU call."""
    from profiling import profile_pass
    from tsloc.crops.loop import train_one_epoch
    from tsloc.crops.runtime import Runtime
    from tsloc.device import autotuned, select_device
    dev = select_device(device)
    rt = Runtime(dev, "fp32")
    net, train, _, optimizer, gen = _training_setup(dev, _random_images(size, steps * batch), batch, 2, blocks, backbone)
    run = lambda: train_one_epoch(net, net, train, batch, optimizer, rt, generator=gen)  # noqa: E731
    with autotuned(dev):  # as fit trains
        run()  # the warm-up epoch (cuDNN's choices, the allocator's first blocks)
        return profile_pass(run, dev, steps, f"{dev}, {size} px, batch {batch}, fp32 eager")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../belgiumtsc", help="folder with Training/ and Testing/")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--subset", type=int, default=300, help="images the notebook's loop is timed on")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", help="cpu, cuda, cuda:N: only the training loop's and inference throughput there")
    ap.add_argument("--batch", type=int, default=64, help="with --device: the batch size")
    ap.add_argument("--images", type=int, default=1024, help="with --device: synthetic images per epoch")
    ap.add_argument("--compile", action="store_true", help="with --device: also fp32 with the step compiled (train.compile)")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16", "fp16"],
                    help="with --device: these precisions, in turn (default: fp32 and what auto picks there)")
    ap.add_argument("--blocks", type=int, default=8,
                    help="with --device: the backbone's last blocks fine-tuned (model.finetune_blocks; -1: all)")
    ap.add_argument("--profile", type=int, metavar="STEPS",
                    help="with --device: also STEPS fp32 training steps under torch.profiler: what bounds a step")
    args = ap.parse_args()
    if args.device and args.profile:
        try:
            profile_device(args.device, args.size, args.batch, args.profile, blocks=args.blocks, backbone=args.backbone)
        except Exception as exc:  # noqa: BLE001 - the profiler (CUPTI) may be missing; the timings below still count
            print(f"# profile failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    if args.device:
        time_device(args.device, args.size, args.batch, args.images, compiled=args.compile, precisions=args.precision,
                    blocks=args.blocks, backbone=args.backbone)
        return 0
    data, repo = Path(args.data), Path(__file__).resolve().parents[1]
    if not all((data / s).is_dir() for s in SPLITS):
        print(f"{data}: no Training/ and Testing/ (restore the data: python ../shared/data/belgiumtsc/restore.py "
              f"{data})", file=sys.stderr)
        return 2
    torch.set_num_threads(torch.get_num_threads())
    print(f"# {args.backbone} at {args.size} px, {args.epochs} epochs, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    df = notebook_frame(data)
    n_images = len(df)  # the notebook iterates over its rows, duplicates included
    per_image = time_notebook(df, args.subset, args.size, args.backbone)
    notebook_total = per_image * n_images * args.epochs
    print(f"(a) notebook loop: {1000 * per_image:.1f} ms per image per epoch, measured on {args.subset} images; "
          f"extrapolated to {n_images} rows x {args.epochs} epochs = {notebook_total / 60:.1f} min")
    runs = [time_project(data, args.epochs, args.size, args.backbone, repo) for _ in range(args.repeats)]
    totals = [sum(r.values()) for r in runs]
    median = statistics.median(totals)
    mid = runs[totals.index(median)]
    print(f"(b) project, raw files to trained model: median {median:.1f} s of {args.repeats} runs "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in mid.items())}); all runs: "
          f"{', '.join(f'{t:.1f}' for t in totals)} s")
    print(f"ratio (a)/(b): {notebook_total / median:.1f}x")
    meta, _ = read_dataset(data)
    store_t = time.perf_counter()
    from tsloc.data.store import build_store
    from tsloc.crops.features import compute_features
    model = build_model(args.backbone, "none", NUM_CLASSES, image_size=args.size)
    store = build_store(meta, args.size)
    decode = time.perf_counter() - store_t
    t = time.perf_counter()
    compute_features(model.backbone, store, torch.device("cpu"))
    floor = time.perf_counter() - t
    print(f"floor: one backbone forward per image = {floor:.1f} s (+ {decode:.1f} s decoding); "
          f"(b) is {median / floor:.2f}x the forward alone")
    test_files = meta.loc[meta["split"] == "Testing", "path"].tolist()[:512]
    batched, single = time_inference(test_files, args.size, args.backbone)
    print(f"predict (files to records): {batched:.0f} images/s in batches of 32, {single:.0f} images/s one at a time")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of this process): {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
