"""The training loop: weighted losses, one epoch over cached features or images, checkpointing.

With a frozen backbone and no augmentation the backbone's output for an image never changes, so
`compute_features` runs it once per image and the heads train on those features; the plain path
(`images_source`) runs the backbone every batch and gives the same result (a test compares them).
"""
from __future__ import annotations

import copy
import platform
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from .boxes import make_valid, paired_iou
from .data.store import normalise
from .model import IMAGENET_MEAN, IMAGENET_STD, SignNet


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def compute_features(backbone: torch.nn.Module, images: np.ndarray, device: torch.device,
                     batch_size: int = 64) -> np.ndarray:
    """Pooled backbone features (N, C) of uint8 images, the backbone in eval mode."""
    backbone = backbone.eval().to(device)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="backbone features", unit="batch"):
        x = normalise(images[start:start + batch_size]).to(device)
        out.append(backbone(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse training frequency, indexed by class id (the notebook indexed by frequency rank)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(w / w.sum(), dtype=torch.float32)


def losses(logits, boxes, y, target_boxes, weights, loss_weight, image_size):
    """Class-weighted cross-entropy plus class-weighted L1 over the 4 box numbers in pixels of the
    input (relative L1 x image_size, the scale the notebook's weight of 100 was tuned for), the
    latter divided by the learnable loss weight."""
    w = weights[y]
    cls = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
    l1 = (F.l1_loss(boxes, target_boxes, reduction="none").sum(1) * image_size * w).sum() / w.sum()
    return cls + l1 / loss_weight, cls, l1


@dataclass
class Batches:
    """What one subset's batches are made of: feature or image rows, labels, relative boxes."""
    source: object          # callable(indices) -> features tensor
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self):
        return len(self.labels)


def features_source(features: np.ndarray, device):
    feats = torch.as_tensor(features)
    return lambda idx: feats[idx].to(device)


def images_source(model: SignNet, images: np.ndarray, device):
    @torch.no_grad()
    def run(idx):
        return model.backbone(normalise(images[idx.numpy()]).to(device))
    return run


def run_epoch(model: SignNet, data: Batches, weights, image_size: int, batch_size: int,
              optimizer=None, generator=None) -> dict:
    """One pass; trains when given an optimizer (shuffled, a last batch of one dropped: BatchNorm1d
    cannot train on it). Returns the sample-weighted mean loss, accuracy and mean IoU."""
    train = optimizer is not None
    model.train(train)
    n = len(data)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    device = model.loss_weight.device
    total = {"loss": 0.0, "correct": 0, "iou": 0.0, "n": 0}
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if train and len(idx) < 2:
            continue
        y, tb = data.labels[idx].to(device), data.boxes[idx].to(device)
        with torch.set_grad_enabled(train):
            logits, boxes = model.heads(data.source(idx))
            loss, _, _ = losses(logits, boxes, y, tb, weights, model.loss_weight, image_size)
        if train:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        k = len(idx)
        total["loss"] += loss.item() * k
        total["correct"] += (logits.argmax(1) == y).sum().item()
        total["iou"] += paired_iou(make_valid(boxes.detach()), tb).sum().item()
        total["n"] += k
    k = max(total["n"], 1)
    return {"loss": total["loss"] / k, "accuracy": total["correct"] / k, "mean_iou": total["iou"] / k}


def fit(model: SignNet, subsets: dict[str, Batches], *, lr: float, epochs: int, batch_size: int,
        seed: int, image_size: int, num_classes: int, log=None, eval_subsets=("valid",)) -> dict:
    """Adam on the heads and the loss weight; keeps the weights of the best validation loss.
    `log(epoch, subset, metrics)` receives every epoch's figures."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    weights = class_weights(subsets["train"].labels.numpy(), num_classes).to(model.loss_weight.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    best = {"loss": float("inf"), "epoch": 0, "state": None}
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", unit="epoch"):
        row = {"train": run_epoch(model, subsets["train"], weights, image_size, batch_size, optimizer, generator)}
        for name in eval_subsets:
            row[name] = run_epoch(model, subsets[name], weights, image_size, batch_size)
        if log:
            log(epoch, row)
        watch = row.get("valid", row["train"])["loss"]
        if watch < best["loss"]:
            best = {"loss": watch, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
    return best


def checkpoint(model: SignNet, state: dict, *, backbone: str, image_size: int, class_names: list[str],
               epoch: int) -> dict:
    """Everything inference needs, in types `torch.load(..., weights_only=True)` accepts."""
    return {
        "state_dict": state,
        "backbone": backbone,
        "num_classes": len(class_names),
        "dropout": float(model.dropout.p),
        "image_size": int(image_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "class_ids": list(range(len(class_names))),
        "class_names": list(class_names),
        "box_format": "left, top, right, bottom, relative to the image (0..1)",
        "epoch": int(epoch),
        "loss_weight": float(state["loss_weight"]),
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                     "python": platform.python_version()},
    }
