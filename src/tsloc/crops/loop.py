"""The training loop in torchvision references' shape: `train_one_epoch`, `evaluate` and `fit`,
which takes the validated `train.*` params themselves (tsloc.params.TrainParams)."""
from __future__ import annotations

import copy
import sys
from contextlib import contextmanager

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..boxes import make_valid, paired_iou
from ..device import autotuned, to_device
from ..errors import DataError
from ..params import TrainParams
from ..resume import Resume, fault_point, restore_torch_streams, torch_streams
from ..schedule import warmup_cosine
from .batches import Batches, epoch_sizes
from .distributed import World
from .losses import Objective, class_weights
from .model import SignNet
from .runtime import Runtime


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


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


GPU_EVAL_BATCH = 256  # the validation passes' batch on a GPU at least (no gradients: the forward's memory alone)


def eval_batch(device: torch.device, batch_size: int) -> int:
    """The batch `fit` evaluates at: on a GPU at least GPU_EVAL_BATCH (the training batch, 32 in the best
    recipe, leaves an evaluation step bound by launches, not by the device); on the CPU the training
    batch, so that the CPU's sums, and so its figures, stay what they were."""
    return batch_size if device.type == "cpu" else max(batch_size, GPU_EVAL_BATCH)


def train_one_epoch(net, objective: Objective, data: Batches, batch_size: int, optimizer, rt: Runtime,
                    scheduler=None, scaler=None, generator=None, progress: str | None = None,
                    size: int | None = None, after_step=None) -> dict:
    """One shuffled pass over the training set through `net` (the objective, or DDP around it), on
    inputs of `size` when given; `after_step(model)` follows each step (the EMA update). A last batch
    that would leave a rank fewer than two images is dropped (BatchNorm1d cannot train on one).
    With N ranks every rank draws the same permutation and trains on its share of each batch.
    Returns the mean per image of the reported loss (`Objective.reported`; training follows its own
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
        y = to_device(data.labels[idx], rt.device)
        inputs, tb = data.fetch(idx, True, size)
        if rt.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a compiled step's CUDA graph replays anew (train.compile)
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
            after_step(objective.model)
        logits, boxes = logits.detach().float(), boxes.detach().float()
        totals.add(objective.reported(logits, boxes, y, tb), logits, y, boxes, tb)
    return totals.means(world)


@torch.no_grad()
def evaluate(objective: Objective, data: Batches, batch_size: int, rt: Runtime | None = None) -> dict:
    """The reported loss, accuracy and mean IoU over a subset, in eval mode; with N ranks each
    evaluates its share and the sums are gathered (no image is scored twice)."""
    model = objective.model
    rt = rt or Runtime(_device(model))
    model.eval()
    rows = rt.world.shard(torch.arange(len(data)))
    totals = Totals(rt.device)
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        y = to_device(data.labels[idx], rt.device)
        inputs, tb = data.fetch(idx, False, None)
        with rt.autocast():
            logits, boxes = model(inputs)
        logits, boxes = logits.float(), boxes.float()
        totals.add(objective.reported(logits, boxes, y, tb), logits, y, boxes, tb)
    return totals.means(rt.world)


def make_optimizer(objective: Objective, train: TrainParams, steps_per_epoch: int):
    """Adam or AdamW over the heads, the balance's parameters (no weight decay) and the fine-tuned
    blocks (at `backbone_lr` x lr); a cosine schedule per step after a linear warm-up."""
    model = objective.model
    heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": heads, "weight_decay": train.weight_decay},
              {"params": [objective.loss_weight, objective.uncertainty], "weight_decay": 0.0}]
    if body:
        groups.append({"params": body, "lr": train.lr * train.backbone_lr, "weight_decay": train.weight_decay})
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    # On a GPU the fused kernel updates every tensor in one launch (the per-tensor loop is launch-bound
    # at batch 32); on the CPU the default implementation, so that CPU results stay what they were.
    fused = {"fused": True} if objective.loss_weight.device.type == "cuda" else {}
    optimizer = cls(groups, lr=train.lr, **fused)
    if train.schedule != "cosine":
        return optimizer, None
    return optimizer, warmup_cosine(optimizer, steps_per_epoch * train.epochs,
                                    round(steps_per_epoch * train.warmup_epochs))


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


def _distribute(objective: Objective, rt: Runtime):
    """The objective as each step calls it: itself for one process; with ranks, DistributedDataParallel
    around it, after SyncBatchNorm on CUDA (PyTorch's SyncBatchNorm runs on GPUs only: on the CPU
    each rank normalises its own share of the batch, and `fit` averages the running statistics)."""
    if not rt.world.distributed:
        return objective
    model = objective.model
    if rt.device.type == "cuda":
        for i in range(model.split_at, len(model.backbone)):
            model.backbone[i] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone[i])
        model.classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.classifier)
        model.box = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.box)
    for p in objective.unused():
        p.requires_grad_(False)
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)


def compile_step(net, rt: Runtime):
    """The step's network and loss through torch.compile (`train.compile`): on a GPU in mode
    reduce-overhead, which replays them as CUDA graphs (one launch instead of hundreds: the step at
    batch 32 is bound by launches, not arithmetic); on the CPU inductor's default. Compiling costs the
    first step of each input shape (the last, smaller batch is another); the frozen blocks' folded copy
    is kept across epochs so that their graph holds. Augmentation and the optimiser stay outside."""
    return torch.compile(net, mode="reduce-overhead" if rt.device.type == "cuda" else None)


def fit(model: SignNet, subsets: dict[str, Batches], train: TrainParams, *, image_size: int,
        rt: Runtime | None = None, log=None, generator: torch.Generator | None = None,
        aug_generator: torch.Generator | None = None, progress: bool = False, resume: Resume | None = None) -> dict:
    """Train the trainable parameters as `train` (the train.* params) says, on inputs of
    `image_size`; returns the kept checkpoint ({"loss", "epoch", "state", "loss_weight"}).

    `keep`: best (the lowest validation loss of `Objective.reported`, averaged over every validation
    image; the notebook's) or last (a schedule that anneals to zero ends at its best point, and the
    validation set then only chooses recipes, never an epoch). `start_size` > 0: progressive
    resizing (`epoch_sizes`); evaluation keeps the stored size. Evaluation passes run every
    `eval_every` epochs and after the last (they do not touch training). `ema_decay` > 0: an
    exponential moving average of the weights and BatchNorm statistics, updated every step
    (torch.optim.swa_utils, as torchvision's references), is what is evaluated and kept. `compile`:
    the step's network and loss through torch.compile (`compile_step`; evaluation stays eager).
    `batch_size` is the global batch: with N ranks each takes 1/N of it.

    `log(epoch, row)` receives every epoch's figures (rank 0 only). `generator` draws the
    permutations (the same on every rank), `aug_generator` the augmentation (one per rank; by
    default `generator` itself). `resume`: the state is written there after every epoch (by rank 0),
    and a run that finds its own state there continues after that epoch with every random stream where
    it was (the GPU's too); on a CPU it ends exactly where an uninterrupted run ends (on a GPU, within its
    kernels' non-deterministic sums)."""
    rt = rt or Runtime(_device(model))
    world = rt.world
    eval_subsets = ("valid", "test") if train.eval_test_each_epoch else ("valid",)
    for name in ("train",) + eval_subsets:
        if not len(subsets[name]):
            raise DataError(f"no {name} images: the {name} set is empty (see data/split.csv and reports/split.json)")
    torch.manual_seed(train.seed)
    generator = generator or torch.Generator().manual_seed(train.seed)
    aug_generator = aug_generator or generator
    labels = subsets["train"].labels.numpy()
    num_classes = model.num_classes
    weights = class_weights(labels, num_classes, train.class_weights)
    box_weights = None if train.box_weights == "same" else class_weights(labels, num_classes, train.box_weights)
    objective = Objective(model, weights, box_weights, image_size=image_size, box_loss=train.box_loss,
                          balance=train.loss_balance, label_smoothing=train.label_smoothing,
                          loss_weight=train.loss_weight).to(rt.device)
    sizes = epoch_sizes(train.start_size, image_size, train.epochs) if train.start_size else None
    n_train, b = len(subsets["train"]), train.batch_size
    steps = n_train // b + (1 if n_train % b >= 2 * world.size else 0)
    net = _distribute(objective, rt)
    if train.compile:
        net = compile_step(net, rt)
    optimizer, scheduler = make_optimizer(objective, train, steps)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train.ema_decay), use_buffers=True)
           if train.ema_decay else None)
    best = {"loss": float("inf"), "epoch": 0, "state": None, "loss_weight": train.loss_weight}
    start = 1
    state = world.broadcast(resume.load() if resume and world.main else None)
    if state:
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        for part, saved in ((scheduler, state["scheduler"]), (ema, state["ema"]), (scaler, state.get("scaler"))):
            if part is not None:
                part.load_state_dict(saved)
        generator.set_state(state["generator"])
        mine = state["ranks"][world.rank]
        aug_generator.set_state(mine["aug"])
        restore_torch_streams(mine, rt.device)
        best, start = state["best"], state["epoch"] + 1
        if world.main:
            tqdm.write(f"{resume.path}: continuing after epoch {state['epoch']} of {train.epochs}", file=sys.stderr)
    with autotuned(rt.device):  # on a GPU: TF32 and cuDNN's autotuner for the steps' fixed shapes
        for epoch in tqdm(range(start, train.epochs + 1), desc="epochs", unit="epoch", initial=start - 1,
                          total=train.epochs, disable=not world.main):
            if world.distributed:
                fault_point("TSLOC_KILL_RANK", f"{world.rank}:{epoch}")
            size = sizes[epoch - 1] if sizes else None
            row = {"train": train_one_epoch(net, objective, subsets["train"], b, optimizer, rt, scheduler, scaler,
                                            generator, f"epoch {epoch} train" if progress and world.main else None,
                                            size, ema.update_parameters if ema else None)}
            if size:
                row["train"]["input_size"] = size
            # Each rank's BatchNorm statistics saw its own shares (on the CPU, without SyncBatchNorm):
            # their mean over the ranks is what every rank evaluates and rank 0 keeps.
            world.average([*model.buffers(), *(ema.module.buffers() if ema else ())])
            evaluated = epoch % train.eval_every == 0 or epoch == train.epochs
            averaged = ema.module.state_dict() if ema else None
            with loaded(model, averaged):
                for name in eval_subsets if evaluated else ():
                    row[name] = evaluate(objective, subsets[name], eval_batch(rt.device, b), rt)
            if log and world.main:
                log(epoch, row, objective)
            watched = "valid" if "valid" in eval_subsets else "train"
            if watched in row:  # evaluated this epoch (the last always is)
                watch = row[watched]["loss"]
                keep_this = watch < best["loss"] if train.keep == "best" else epoch == train.epochs  # copy only what is kept
                if keep_this:
                    best = {"loss": watch, "epoch": epoch, "state": copy.deepcopy(averaged or model.state_dict()),
                            "loss_weight": objective.loss_weight.item()}
            if resume:
                ranks = world.gather({"aug": aug_generator.get_state(), **torch_streams(rt.device)})
                if world.main:
                    resume.save({
                        "epoch": epoch, "objective": objective.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
                        "ema": ema.state_dict() if ema else None, "scaler": scaler.state_dict() if scaler else None,
                        "generator": generator.get_state(), "ranks": ranks, "best": best})
                    fault_point("TSLOC_KILL_AFTER_EPOCH", str(epoch))
    return best
