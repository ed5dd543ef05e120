"""The training loop: weighted losses, one epoch over cached features or images, checkpointing.

With a frozen backbone and no augmentation the backbone's output for an image never changes, so
`compute_features` runs it once per image and the heads train on those features; the plain path
(`images_source`) runs the backbone every batch and gives the same result (a test compares them).
"""
from __future__ import annotations

import copy
import math
import os
import platform
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.ops import generalized_box_iou_loss
from tqdm import tqdm

from .augment import augment
from .boxes import make_valid, paired_iou
from .data.store import normalise, standardise, to_float
from .errors import DataError
from .io import write_torch
from .model import IMAGENET_MEAN, IMAGENET_STD, SignNet, fuse_conv_bn, pool


def select_device(name: str) -> torch.device:
    """auto: CUDA when present, else the CPU. Asking for a GPU that is not there is an error, not a
    traceback from deep inside PyTorch at the first tensor moved."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DataError(f"device {name!r}: CUDA is not available on this machine (torch {torch.__version__} "
                            f"sees no GPU); use auto or cpu")
        if device.index is not None and device.index >= count:
            raise DataError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


@torch.no_grad()
def feature_extractor(backbone: torch.nn.Module, device: torch.device, batch_size: int = 64):
    """A function from uint8 images (N, S, S, 3) to pooled backbone features (N, C), the backbone fused
    once and in eval mode; batches of `batch_size` (a chunked caller keeps its chunks a multiple of it,
    so the numbers do not depend on the chunking)."""
    backbone = fuse_conv_bn(backbone).to(device, memory_format=torch.channels_last)

    @torch.no_grad()
    def run(images, progress: bool = False) -> np.ndarray:
        out = []
        for start in tqdm(range(0, len(images), batch_size), desc="backbone features", unit="batch",
                          disable=not progress, leave=False):
            x = normalise(images[start:start + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
            out.append(pool(backbone(x)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    return run


def compute_features(backbone: torch.nn.Module, images: np.ndarray, device: torch.device,
                     batch_size: int = 64) -> np.ndarray:
    """Pooled backbone features (N, C) of uint8 images, the backbone in eval mode."""
    return feature_extractor(backbone, device, batch_size)(images, progress=True)


def class_weights(labels: np.ndarray, num_classes: int, kind: str = "inverse") -> torch.Tensor:
    """Per-class loss weights indexed by class id (the notebook indexed by frequency rank):
    inverse training frequency (the notebook's: a class of 6 images weighs 50 times one of 300),
    its square root (a milder push towards rare classes), or none (every image alike)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    power = {"inverse": 1.0, "sqrt": 0.5, "none": 0.0}[kind]
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    return torch.tensor(w / w.sum(), dtype=torch.float32)


@dataclass(frozen=True)
class LossConfig:
    """How the two losses are made and balanced.

    box: l1 (in pixels of the input, as the notebook), giou (torchvision's generalized IoU loss,
    times the input size so that it speaks pixels too) or l1+giou.
    balance: learned (the notebook's: box / w, w learnable from `weight`; it can only grow), fixed
    (box / `weight`), or uncertainty (Kendall et al. 2018: exp(-s1) cls + s1 + exp(-s2) box + s2,
    with learned log variances)."""
    image_size: int
    box: str = "l1"
    balance: str = "learned"
    label_smoothing: float = 0.0
    report_weight: float = 100.0    # the fixed box-loss divisor of the reported loss (train.loss_weight)


def losses(logits, boxes, y, target_boxes, weights, model, cfg: LossConfig, box_weights=None):
    """Class-weighted cross-entropy and class-weighted box loss (by `box_weights`, else by `weights`
    as the notebook), balanced per `cfg`. Returns (total, classification, box)."""
    w = weights[y]
    ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=cfg.label_smoothing)
    cls = (ce * w).sum() / w.sum()
    per_box = box_losses(boxes, target_boxes, cfg)
    wb = w if box_weights is None else box_weights[y]
    box = (per_box * wb).sum() / wb.sum()
    if cfg.balance == "uncertainty":
        s = model.uncertainty
        total = torch.exp(-s[0]) * cls + s[0] + torch.exp(-s[1]) * box + s[1]
    elif cfg.balance == "fixed":
        total = cls + box / model.loss_weight.detach()
    else:
        total = cls + box / model.loss_weight
    return total, cls, box


def box_losses(boxes, target_boxes, cfg: LossConfig) -> torch.Tensor:
    """Each image's box loss (`cfg.box`), in pixels of the input."""
    per_box = boxes.new_zeros(len(boxes))
    if "l1" in cfg.box:
        per_box = per_box + F.l1_loss(boxes, target_boxes, reduction="none").sum(1) * cfg.image_size
    if "giou" in cfg.box:
        valid = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        per_box = per_box + generalized_box_iou_loss(valid, target_boxes, reduction="none") * cfg.image_size
    return per_box


def reported_losses(logits, boxes, y, target_boxes, cfg: LossConfig) -> torch.Tensor:
    """Each image's loss as reported and as `keep: best` compares it: plain cross-entropy (no class
    weights, no smoothing) plus the box loss over the fixed `cfg.report_weight`. Its mean over a
    subset depends on neither the batch size nor a learned balance, so epochs and runs compare."""
    return F.cross_entropy(logits, y, reduction="none") + box_losses(boxes, target_boxes, cfg) / cfg.report_weight


@dataclass
class Batches:
    """One subset: `fetch(indices, train)` gives what the heads take (features) and the relative
    boxes for those rows (augmentation may move them)."""
    fetch: object
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self):
        return len(self.labels)


def features_source(features: np.ndarray, boxes: torch.Tensor, device):
    feats = torch.as_tensor(features)
    return lambda idx, train, size=None: (feats[idx].to(device), boxes[idx].to(device))


def images_source(model: SignNet, images: np.ndarray, boxes: torch.Tensor, device, augmentation: dict | None = None,
                  generator: torch.Generator | None = None):
    """The plain path: the backbone runs on every batch (on augmented images when training with
    `augmentation`: keyword arguments of `tsloc.augment.augment`), resized to `size` when given
    (relative boxes do not change with the size)."""
    def run(idx, train, size=None):
        batch = torch.as_tensor(images[idx.numpy()])
        b = boxes[idx]
        if train and augmentation:
            x, b = augment(batch, b, generator=generator, size=size, **augmentation)
        else:
            x = to_float(batch)
            if size and size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return model.features(standardise(x.to(device))), b.to(device)
    return run


def epoch_sizes(start: int, full: int, epochs: int, step: int = 16) -> list[int]:
    """Progressive resizing: input sizes growing linearly from `start` at the first epoch to `full`
    at the last, rounded to multiples of `step` (few distinct shapes). Early epochs, which learn
    coarse features, cost (start / full)^2 as much; the last ones train at the size the model is
    evaluated at."""
    if epochs == 1:
        return [full]
    sizes = [start + (full - start) * e / (epochs - 1) for e in range(epochs)]
    return [min(full, max(step, int(round(s / step)) * step)) if e < epochs - 1 else full
            for e, s in enumerate(sizes)]


def run_epoch(model: SignNet, data: Batches, weights, loss_cfg: LossConfig, batch_size: int,
              optimizer=None, scheduler=None, generator=None, progress: str | None = None,
              box_weights=None, size: int | None = None, after_step=None) -> dict:
    """One pass; trains when given an optimizer (shuffled, a last batch of one dropped: BatchNorm1d
    cannot train on it), on inputs of `size` when given; `after_step(model)` follows each step
    (the EMA update). Returns the mean per image of the reported loss (`reported_losses`; training
    follows its own weighted objective), the accuracy and the mean IoU."""
    train = optimizer is not None
    model.train(train)
    n = len(data)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    device = model.loss_weight.device
    total = {"loss": 0.0, "correct": 0, "iou": 0.0, "n": 0}
    starts = range(0, n, batch_size)
    for start in (tqdm(starts, desc=progress, unit="batch", leave=False) if progress else starts):
        idx = order[start:start + batch_size]
        if train and len(idx) < 2:
            continue
        y = data.labels[idx].to(device)
        with torch.set_grad_enabled(train):
            feats, tb = data.fetch(idx, train, size)
            logits, boxes = model.heads(feats)
            loss, _, _ = losses(logits, boxes, y, tb, weights, model, loss_cfg, box_weights)
            reported = reported_losses(logits.detach(), boxes.detach(), y, tb, loss_cfg)
        if train:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(model)
        k = len(idx)
        total["loss"] += reported.sum().item()
        total["correct"] += (logits.argmax(1) == y).sum().item()
        total["iou"] += paired_iou(make_valid(boxes.detach()), tb).sum().item()
        total["n"] += k
    k = max(total["n"], 1)
    return {"loss": total["loss"] / k, "accuracy": total["correct"] / k, "mean_iou": total["iou"] / k}


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    optimizer: str = "adam"         # adam | adamw
    weight_decay: float = 0.0
    backbone_lr: float = 0.1        # the fine-tuned backbone's lr, as a share of `lr`
    schedule: str = "none"          # none | cosine (per step, after a linear warm-up)
    warmup_epochs: float = 0.0


def make_optimizer(model: SignNet, cfg: OptimConfig, steps_per_epoch: int, epochs: int):
    heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")
             and n not in ("loss_weight", "uncertainty")]
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": heads, "weight_decay": cfg.weight_decay},
              {"params": [model.loss_weight, model.uncertainty], "weight_decay": 0.0}]
    if body:
        groups.append({"params": body, "lr": cfg.lr * cfg.backbone_lr, "weight_decay": cfg.weight_decay})
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = cls(groups, lr=cfg.lr)
    if cfg.schedule != "cosine":
        return optimizer, None
    total = max(1, steps_per_epoch * epochs)
    warm = max(1, round(steps_per_epoch * cfg.warmup_epochs))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def loaded(model: torch.nn.Module, state: dict | None):
    """Run with `state` loaded into `model` (the EMA weights, to evaluate them through the same
    image sources), then put the model's own weights back."""
    if state is None:
        yield
        return
    own = copy.deepcopy(model.state_dict())
    model.load_state_dict(state)
    try:
        yield
    finally:
        model.load_state_dict(own)


@dataclass
class Resume:
    """Where `fit` keeps its whole state after every epoch (model, optimizer, schedule, moving
    average, random generators, the checkpoint kept so far), and what that state belongs to: a file
    with another `key` (other params or data) is discarded, not continued."""
    path: Path
    key: str
    _state: dict | None = field(default=None, init=False, repr=False)

    def load(self) -> dict | None:
        """The saved state if it is this run's; read once (it holds the model several times over)."""
        if self._state is None:
            self._state = self._read()
        return self._state

    def _read(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated file: the write is atomic, so only a damaged disk
            tqdm.write(f"{self.path}: unreadable ({type(exc).__name__}), starting from epoch 1", file=sys.stderr)
            return None
        if state.get("key") != self.key:
            tqdm.write(f"{self.path}: from other params or data, discarded; starting from epoch 1", file=sys.stderr)
            self.path.unlink()
            return None
        return state

    def epochs_done(self) -> int:
        state = self.load()
        return state["epoch"] if state else 0


def fit(model: SignNet, subsets: dict[str, Batches], *, epochs: int, batch_size: int, seed: int,
        num_classes: int, loss_cfg: LossConfig, optim_cfg: OptimConfig = OptimConfig(), log=None,
        weighting: str = "inverse", box_weighting: str = "same", keep: str = "best",
        eval_subsets=("valid",), generator: torch.Generator | None = None, progress: bool = False,
        sizes: list[int] | None = None, eval_every: int = 1, ema_decay: float = 0.0,
        resume: Resume | None = None) -> dict:
    """Train the trainable parameters; returns the weights of the lowest validation loss (`keep="best"`,
    the notebook's; the loss of `reported_losses`, averaged over every validation image) or of the last epoch (`keep="last"`: a schedule that anneals to zero ends at
    its best point, and the validation set then only chooses recipes, never an epoch).
    `log(epoch, row)` receives every epoch's figures. `weighting` weighs the classes in the
    cross-entropy; `box_weighting` in the box loss ("same": as `weighting`, the notebook's).
    `sizes` gives each epoch's training input size (`epoch_sizes`); evaluation keeps the stored size.
    `eval_every`: the evaluation passes run every N epochs and after the last (they do not touch
    training: the same seed trains the same weights). `ema_decay` > 0: an exponential moving average
    of the weights and BatchNorm statistics, updated every step (torch.optim.swa_utils, as
    torchvision's references), is what is evaluated and kept. `resume`: the state is written there
    after every epoch, and a run that finds its own state there continues after that epoch; on a
    CPU it ends exactly where an uninterrupted run ends."""
    for name in ("train",) + tuple(eval_subsets):
        if not len(subsets[name]):
            raise DataError(f"no {name} images: the {name} set is empty (see data/split.csv and reports/split.json)")
    torch.manual_seed(seed)
    generator = generator or torch.Generator().manual_seed(seed)
    labels = subsets["train"].labels.numpy()
    weights = class_weights(labels, num_classes, weighting).to(model.loss_weight.device)
    box_weights = None if box_weighting == "same" else class_weights(labels, num_classes, box_weighting).to(weights.device)
    n_train = len(subsets["train"])
    steps = n_train // batch_size + (1 if n_train % batch_size > 1 else 0)
    optimizer, scheduler = make_optimizer(model, optim_cfg, steps, epochs)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
           if ema_decay else None)
    best = {"loss": float("inf"), "epoch": 0, "state": None}
    start = 1
    state = resume.load() if resume else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        best, start = state["best"], state["epoch"] + 1
        tqdm.write(f"{resume.path}: continuing after epoch {state['epoch']} of {epochs}", file=sys.stderr)
    for epoch in tqdm(range(start, epochs + 1), desc="epochs", unit="epoch", initial=start - 1, total=epochs):
        row = {"train": run_epoch(model, subsets["train"], weights, loss_cfg, batch_size, optimizer, scheduler,
                                  generator, progress=f"epoch {epoch} train" if progress else None,
                                  box_weights=box_weights, size=sizes[epoch - 1] if sizes else None,
                                  after_step=ema.update_parameters if ema else None)}
        if sizes:
            row["train"]["input_size"] = sizes[epoch - 1]
        evaluated = epoch % eval_every == 0 or epoch == epochs
        averaged = ema.module.state_dict() if ema else None
        with loaded(model, averaged):
            for name in eval_subsets if evaluated else ():
                row[name] = run_epoch(model, subsets[name], weights, loss_cfg, batch_size, box_weights=box_weights)
        if log:
            log(epoch, row)
        watched = "valid" if "valid" in eval_subsets else "train"
        if watched in row:  # evaluated this epoch (the last always is)
            watch = row[watched]["loss"]
            keep_this = watch < best["loss"] if keep == "best" else epoch == epochs  # copy only what is kept
            if keep_this:
                best = {"loss": watch, "epoch": epoch, "state": copy.deepcopy(averaged or model.state_dict())}
        if resume:
            write_torch(resume.path, {
                "key": resume.key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None, "ema": ema.state_dict() if ema else None,
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "best": best})
            _fault_point(epoch)
    return best


def _fault_point(epoch: int) -> None:
    """Fault injection for the tests: TSLOC_KILL_AFTER_EPOCH=N kills this process (SIGKILL, as a
    lost machine or `kill -9` would) right after epoch N's state is written."""
    if os.environ.get("TSLOC_KILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint(model: SignNet, state: dict, *, backbone: str, image_size: int, class_names: list[str],
               epoch: int) -> dict:
    """Everything inference needs, in types `torch.load(..., weights_only=True)` accepts."""
    return {
        "state_dict": state,
        "backbone": backbone,
        "box_head": model.box_kind,
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
