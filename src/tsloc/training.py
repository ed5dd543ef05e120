"""The training loop: weighted losses, `train_one_epoch` and `evaluate` over cached features or images,
`fit` with one typed config, checkpointing; device, precision and ranks decided once (`runtime`).

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
from .distributed import World, join
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
    """One subset: `fetch(indices, train, size)` gives the network's input for those rows (pooled
    features, or standardised images on the device) and their relative boxes (augmentation may
    move them)."""
    fetch: object
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self):
        return len(self.labels)


def features_source(features: np.ndarray, boxes: torch.Tensor, device):
    feats = torch.as_tensor(features)
    return lambda idx, train, size=None: (feats[idx].to(device), boxes[idx].to(device))


STORE_SHARE = 0.5  # the uint8 store moves to the GPU when it takes at most this share of its free memory


def place_store(images: np.ndarray, device) -> torch.Tensor:
    """The uint8 image store where batches are cut from: on the CPU as it is; on a GPU, copied there
    once when it fits (`STORE_SHARE` of the free memory), else kept in pinned host memory so that
    each batch's copy is asynchronous."""
    store = torch.from_numpy(np.ascontiguousarray(images))
    device = torch.device(device)
    if device.type != "cuda":
        return store
    free, _ = torch.cuda.mem_get_info(device)
    return store.to(device) if store.nbytes <= STORE_SHARE * free else store.pin_memory()


def images_source(images: np.ndarray, boxes: torch.Tensor, device, augmentation: dict | None = None,
                  generator: torch.Generator | None = None):
    """The plain path: standardised images for the whole network (augmented when training with
    `augmentation`: keyword arguments of `tsloc.augment.augment`, run as batched tensor ops on the
    device), resized to `size` when given (relative boxes do not change with the size)."""
    store = place_store(images, device)
    device = torch.device(device)

    def run(idx, train, size=None):
        if store.device.type == device.type:           # the CPU, or the whole store on the GPU
            batch = store[idx.to(device)]
        else:                                          # pinned host memory: an asynchronous copy
            batch = store[idx].pin_memory().to(device, non_blocking=True)
        b = boxes[idx]
        if train and augmentation:
            x, b = augment(batch, b, generator=generator, size=size, **augmentation)
        else:
            x = to_float(batch)
            if size and size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return standardise(x), b.to(device)
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


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """train.precision: auto is bf16 on a CUDA device that has it, else fp16, and fp32 on the CPU
    (where mixed precision does not pay, and the CPU results stay what they were)."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise DataError(f"train.precision fp16 needs a CUDA device (this run is on {device}); use fp32 or bf16")
    return name


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop runs, decided once (`runtime`): the device, the precision (resolved:
    fp32, bf16 or fp16) and this process's rank among the ranks (`World()`: one process)."""
    device: torch.device
    precision: str = "fp32"
    world: World = World()

    def autocast(self):
        """Mixed precision for the forward pass and the loss (a no-op at fp32)."""
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=self.precision != "fp32")


def runtime(device: str, precision: str, processes: int = 1) -> Runtime:
    """Device, precision and distribution, chosen in one place: under torchrun each rank joins the
    process group (gloo on the CPU, NCCL on CUDA) and takes the GPU of its local rank."""
    chosen = select_device(device)
    world = join(chosen, processes)
    if chosen.type == "cuda" and world.distributed:
        chosen = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(chosen)
    return Runtime(chosen, resolve_precision(precision, chosen), world)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    optimizer: str = "adam"         # adam | adamw
    weight_decay: float = 0.0
    backbone_lr: float = 0.1        # the fine-tuned backbone's lr, as a share of `lr`
    schedule: str = "none"          # none | cosine (per step, after a linear warm-up)
    warmup_epochs: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """What `fit` trains: one typed config built once from params (the train stage) or by hand (tests).

    `weighting` weighs the classes in the cross-entropy; `box_weighting` in the box loss ("same":
    as `weighting`, the notebook's). `keep`: best (the lowest validation loss of `reported_losses`,
    averaged over every validation image; the notebook's) or last (a schedule that anneals to zero
    ends at its best point, and the validation set then only chooses recipes, never an epoch).
    `sizes` gives each epoch's training input size (`epoch_sizes`); evaluation keeps the stored size.
    `eval_every`: the evaluation passes run every N epochs and after the last (they do not touch
    training). `ema_decay` > 0: an exponential moving average of the weights and BatchNorm
    statistics, updated every step (torch.optim.swa_utils, as torchvision's references), is what is
    evaluated and kept. `batch_size` is the global batch: with N ranks each takes 1/N of it."""
    epochs: int
    batch_size: int
    seed: int
    num_classes: int
    loss: LossConfig
    optim: OptimConfig = OptimConfig()
    weighting: str = "inverse"
    box_weighting: str = "same"
    keep: str = "best"
    eval_subsets: tuple[str, ...] = ("valid",)
    sizes: tuple[int, ...] | None = None
    eval_every: int = 1
    ema_decay: float = 0.0


class Objective(torch.nn.Module):
    """The model and its weighted training loss in one forward, so that DistributedDataParallel
    (which synchronises the gradients of what a forward reached) also sees the loss balance's
    parameters. Returns (loss, logits, boxes)."""

    def __init__(self, model: SignNet, weights: torch.Tensor, box_weights: torch.Tensor | None, cfg: LossConfig):
        super().__init__()
        self.model, self.weights, self.box_weights, self.cfg = model, weights, box_weights, cfg

    def forward(self, inputs, y, target_boxes):
        logits, boxes = self.model(inputs)
        loss, _, _ = losses(logits, boxes, y, target_boxes, self.weights, self.model, self.cfg, self.box_weights)
        return loss, logits, boxes


class Totals:
    """A pass's sums (reported loss, correct, IoU) kept on the device in float64, so that no step
    waits for the host; summed over the ranks with the image count and read once at the end."""

    def __init__(self, device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, reported, logits, y, boxes, target_boxes) -> None:
        self.sums += torch.stack([reported.sum().double(), (logits.argmax(1) == y).sum().double(),
                                  paired_iou(make_valid(boxes), target_boxes).sum().double()])
        self.n += len(y)

    def means(self, world: World) -> dict:
        sums = torch.cat([self.sums, self.sums.new_tensor([self.n])])
        loss, correct, iou, n = world.sum(sums).tolist()
        k = max(int(n), 1)
        return {"loss": loss / k, "accuracy": correct / k, "mean_iou": iou / k}


def _progress(steps, label):
    return tqdm(steps, desc=label, unit="batch", leave=False) if label else steps


def train_one_epoch(net, model: SignNet, data: Batches, loss_cfg: LossConfig, batch_size: int, optimizer,
                    rt: Runtime, scheduler=None, scaler=None, generator=None, progress: str | None = None,
                    size: int | None = None, after_step=None) -> dict:
    """One shuffled pass over the training set through `net` (an `Objective`, or DDP around one), on
    inputs of `size` when given; `after_step(model)` follows each step (the EMA update). A last batch
    that would leave a rank fewer than two images is dropped (BatchNorm1d cannot train on one).
    With N ranks every rank draws the same permutation and trains on its share of each batch.
    Returns the mean per image of the reported loss (`reported_losses`; training follows its own
    weighted objective), the accuracy and the mean IoU."""
    net.train()
    world = rt.world
    order = torch.randperm(len(data), generator=generator)
    totals = Totals(rt.device)
    for start in _progress(range(0, len(data), batch_size), progress):
        idx = order[start:start + batch_size]
        if len(idx) < 2 * world.size:
            continue
        idx = world.shard(idx)
        y = data.labels[idx].to(rt.device)
        inputs, tb = data.fetch(idx, True, size)
        with rt.autocast():
            loss, logits, boxes = net(inputs, y, tb)
        optimizer.zero_grad()
        if scaler is not None:  # fp16: scaled gradients, skipped steps on overflow
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(model)
        logits, boxes = logits.detach().float(), boxes.detach().float()
        totals.add(reported_losses(logits, boxes, y, tb, loss_cfg), logits, y, boxes, tb)
    return totals.means(world)


@torch.no_grad()
def evaluate(model: SignNet, data: Batches, loss_cfg: LossConfig, batch_size: int, rt: Runtime | None = None) -> dict:
    """The reported loss, accuracy and mean IoU over a subset, in eval mode; with N ranks each
    evaluates its share and the sums are gathered (no image is scored twice)."""
    rt = rt or Runtime(model.loss_weight.device)
    model.eval()
    rows = rt.world.shard(torch.arange(len(data)))
    totals = Totals(rt.device)
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        y = data.labels[idx].to(rt.device)
        inputs, tb = data.fetch(idx, False, None)
        with rt.autocast():
            logits, boxes = model(inputs)
        logits, boxes = logits.float(), boxes.float()
        totals.add(reported_losses(logits, boxes, y, tb, loss_cfg), logits, y, boxes, tb)
    return totals.means(rt.world)


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


def _distribute(model: SignNet, objective: Objective, rt: Runtime):
    """The objective as each step calls it: itself for one process; with ranks, DistributedDataParallel
    around it, after SyncBatchNorm on CUDA (PyTorch's SyncBatchNorm runs on GPUs only: on the CPU
    each rank normalises its own share of the batch, and `fit` averages the running statistics)."""
    if not rt.world.distributed:
        return objective
    if rt.device.type == "cuda":
        for i in range(model.split_at, len(model.backbone)):
            model.backbone[i] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone[i])
        model.classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.classifier)
        model.box = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.box)
    unused = {"uncertainty": [model.loss_weight], "fixed": [model.loss_weight, model.uncertainty],
              "learned": [model.uncertainty]}[objective.cfg.balance]
    for p in unused:  # DDP waits for a gradient of every parameter that requires one
        p.requires_grad_(False)
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)


def fit(model: SignNet, subsets: dict[str, Batches], cfg: TrainConfig, *, rt: Runtime | None = None, log=None,
        generator: torch.Generator | None = None, aug_generator: torch.Generator | None = None,
        progress: bool = False, resume: Resume | None = None) -> dict:
    """Train the trainable parameters as `cfg` says; returns the kept checkpoint ({"loss", "epoch",
    "state"}). `log(epoch, row)` receives every epoch's figures (rank 0 only). `generator` draws the
    permutations (the same on every rank), `aug_generator` the augmentation (one per rank; by
    default `generator` itself). `resume`: the state is written there after every epoch (by rank 0),
    and a run that finds its own state there continues after that epoch; on a CPU it ends exactly
    where an uninterrupted run ends."""
    rt = rt or Runtime(model.loss_weight.device)
    world = rt.world
    for name in ("train",) + tuple(cfg.eval_subsets):
        if not len(subsets[name]):
            raise DataError(f"no {name} images: the {name} set is empty (see data/split.csv and reports/split.json)")
    torch.manual_seed(cfg.seed)
    generator = generator or torch.Generator().manual_seed(cfg.seed)
    aug_generator = aug_generator or generator
    labels = subsets["train"].labels.numpy()
    weights = class_weights(labels, cfg.num_classes, cfg.weighting).to(rt.device)
    box_weights = (None if cfg.box_weighting == "same" else
                   class_weights(labels, cfg.num_classes, cfg.box_weighting).to(rt.device))
    n_train, b = len(subsets["train"]), cfg.batch_size
    steps = n_train // b + (1 if n_train % b >= 2 * world.size else 0)
    net = _distribute(model, Objective(model, weights, box_weights, cfg.loss), rt)
    optimizer, scheduler = make_optimizer(model, cfg.optim, steps, cfg.epochs)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay else None)
    best = {"loss": float("inf"), "epoch": 0, "state": None}
    start = 1
    state = world.broadcast(resume.load() if resume and world.main else None)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for part, saved in ((scheduler, state["scheduler"]), (ema, state["ema"]), (scaler, state.get("scaler"))):
            if part is not None:
                part.load_state_dict(saved)
        generator.set_state(state["generator"])
        mine = state["ranks"][world.rank]
        aug_generator.set_state(mine["aug"])
        torch.set_rng_state(mine["torch_rng"])
        best, start = state["best"], state["epoch"] + 1
        if world.main:
            tqdm.write(f"{resume.path}: continuing after epoch {state['epoch']} of {cfg.epochs}", file=sys.stderr)
    for epoch in tqdm(range(start, cfg.epochs + 1), desc="epochs", unit="epoch", initial=start - 1,
                      total=cfg.epochs, disable=not world.main):
        if world.distributed:
            _fault_point("TSLOC_KILL_RANK", f"{world.rank}:{epoch}")
        size = cfg.sizes[epoch - 1] if cfg.sizes else None
        row = {"train": train_one_epoch(net, model, subsets["train"], cfg.loss, b, optimizer, rt, scheduler, scaler,
                                        generator, f"epoch {epoch} train" if progress and world.main else None,
                                        size, ema.update_parameters if ema else None)}
        if size:
            row["train"]["input_size"] = size
        # Each rank's BatchNorm statistics saw its own shares (on the CPU, without SyncBatchNorm):
        # their mean over the ranks is what every rank evaluates and rank 0 keeps.
        world.average([*model.buffers(), *(ema.module.buffers() if ema else ())])
        evaluated = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        averaged = ema.module.state_dict() if ema else None
        with loaded(model, averaged):
            for name in cfg.eval_subsets if evaluated else ():
                row[name] = evaluate(model, subsets[name], cfg.loss, b, rt)
        if log and world.main:
            log(epoch, row)
        watched = "valid" if "valid" in cfg.eval_subsets else "train"
        if watched in row:  # evaluated this epoch (the last always is)
            watch = row[watched]["loss"]
            keep_this = watch < best["loss"] if cfg.keep == "best" else epoch == cfg.epochs  # copy only what is kept
            if keep_this:
                best = {"loss": watch, "epoch": epoch, "state": copy.deepcopy(averaged or model.state_dict())}
        if resume:
            ranks = world.gather({"aug": aug_generator.get_state(), "torch_rng": torch.get_rng_state()})
            if world.main:
                write_torch(resume.path, {
                    "key": resume.key, "epoch": epoch, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
                    "ema": ema.state_dict() if ema else None, "scaler": scaler.state_dict() if scaler else None,
                    "generator": generator.get_state(), "ranks": ranks, "best": best})
                _fault_point("TSLOC_KILL_AFTER_EPOCH", str(epoch))
    return best


def _fault_point(variable: str, here: str) -> None:
    """Fault injection for the tests: TSLOC_KILL_AFTER_EPOCH=N kills this process (SIGKILL, as a
    lost machine or `kill -9` would) right after epoch N's state is written; TSLOC_KILL_RANK=R:N
    kills rank R as epoch N starts (the other ranks then wait in a collective for it)."""
    if os.environ.get(variable) == here:
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
