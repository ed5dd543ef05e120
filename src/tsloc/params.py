"""Typed, validated parameters from params.yaml: one place for defaults and errors.

Stages receive a `Tracked` view of the parameters, which records every key the code reads.
The tests compare those records with each stage's `params:` in dvc.yaml, so a key read but not
declared (an experiment that would not rerun the stage) or declared but unused fails a test.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.2's numbers, as DVC reads params.yaml: `1e-3` is a float (PyYAML's YAML 1.1 reads a
    string), so `-S train.lr=1e-3` and what DVC shows agree with what the code gets."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


class ParamsError(ValueError):
    """A value in params.yaml is missing or invalid."""


@dataclass(frozen=True)
class SyntheticParams:
    size: int = 1800
    seed: int = 0
    format: str = "belgiumtsc"    # the layout the generator writes: belgiumtsc | gtsrb | manifest


@dataclass(frozen=True)
class DataParams:
    source: str = "synthetic"
    format: str = "auto"          # auto | belgiumtsc | gtsrb | manifest
    path: str | None = None
    crop_margin: float = 0.0      # manifest of whole frames: crop each box with this margin (share of the box); 0: off
    base_url: str = "https://btsd.ethz.ch/shareddata/BelgiumTSC/"
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    image_size: int = 128


@dataclass(frozen=True)
class ModelParams:
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"     # imagenet | none | path to a state dict
    dropout: float = 0.2
    finetune_blocks: int = 0      # 0: frozen backbone; N: fine-tune its last N blocks; -1: all of it
    box_head: str = "pooled"      # pooled (the notebook's) | spatial (a 4 x 4 grid of the feature map)


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool = False
    margin: float = 0.45          # re-crop: each side's margin ~ U(0, margin) x the box's size
    recrop: float = 1.0           # share of images re-cropped; the others keep their own framing
    rotation: float = 10.0        # degrees, either way
    color: float = 0.3            # brightness, contrast, saturation factors in 1 +- color
    blur: float = 0.3             # share of images blurred


@dataclass(frozen=True)
class TrainParams:
    lr: float = 0.001
    epochs: int = 20
    batch_size: int = 32
    seed: int = 42
    device: str = "auto"          # auto | cpu | cuda
    precision: str = "auto"       # auto (bf16/fp16 on CUDA, fp32 on the CPU) | fp32 | bf16 | fp16
    processes: int = 1            # ranks under torchrun (gloo on the CPU, NCCL on CUDA); batch_size is global
    eval_test_each_epoch: bool = False
    optimizer: str = "adam"       # adam | adamw
    weight_decay: float = 0.0
    backbone_lr: float = 0.1      # fine-tuned backbone's lr as a share of lr
    schedule: str = "none"        # none | cosine (after warmup_epochs of linear warm-up)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    box_loss: str = "l1"          # l1 | giou | l1+giou
    loss_balance: str = "learned" # learned (the notebook's) | fixed | uncertainty (Kendall et al. 2018)
    loss_weight: float = 100.0    # the box loss is divided by it (learned: its initial value)
    class_weights: str = "inverse"  # inverse (the notebook's) | sqrt | none
    box_weights: str = "same"       # the box loss's class weights: same (as class_weights, the notebook) | inverse | sqrt | none
    keep: str = "best"              # the checkpoint kept: best (validation loss, the notebook's) | last epoch
    start_size: int = 0             # progressive resizing: first epoch's input size, growing to data.image_size (0: off)
    eval_every: int = 1             # evaluation passes every N epochs and after the last
    ema_decay: float = 0.0          # > 0: evaluate and keep an exponential moving average of the weights (per step)
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass(frozen=True)
class VisualizeParams:
    seed: int = 0


@dataclass(frozen=True)
class SplitParams:
    strategy: str = "pole-grouped"
    valid_fraction: float = 0.2
    test_fraction: float = 0.2    # a data set without a test side (a manifest without `subset`): test carved from it
    seed: int = 42
    folds: int = 0                # 0: off; K >= 2: K folds of Training's signs, fold `fold` is validation
    fold: int = 0


@dataclass(frozen=True)
class ExportParams:
    calibration_images: int = 2048  # training images the int8 ranges are calibrated on (all, when fewer)
    seed: int = 0                   # which training images
    float_convs: int = 3            # the first N convolutions stay float in int8 (MobileNetV2: stem, block 1)


@dataclass(frozen=True)
class Params:
    recipe: str = "notebook"      # the name of the recipe composed into params.yaml (conf/recipe/<name>.yaml)
    data: DataParams = field(default_factory=DataParams)
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    visualize: VisualizeParams = field(default_factory=VisualizeParams)
    export: ExportParams = field(default_factory=ExportParams)


def _build(cls, raw, where: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: '{where}' must be a mapping, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        near = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f", did you mean {where + '.' if where else ''}{near[0]}?" if near else \
            f" (known under '{where or 'the top'}': {', '.join(known)})"
        raise ParamsError(f"params.yaml: '{key}' is an unknown key{hint}"
                          + (f" (and {len(unknown) - 1} more unknown: {unknown[1:]})" if len(unknown) > 1 else ""))
    values = {}
    for name, f in known.items():
        key = f"{where}.{name}" if where else name
        if name not in raw:
            continue
        value = raw[name]
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, key)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ParamsError(f"params.yaml: '{key}' must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParamsError(f"params.yaml: '{key}' must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamsError(f"params.yaml: '{key}' must be a number, got {value!r}")
            value = float(value)
        elif value is not None and not isinstance(value, str):
            raise ParamsError(f"params.yaml: '{key}' must be a string, got {value!r}")
        values[name] = value
    return cls(**values)


def uses_cached_features(p: Params) -> bool:
    """Frozen backbone, no augmentation, pooled box head: the heads can train on features computed once
    per image (exact, and far faster). The one place that decides it, for the check below and the train
    stage."""
    return p.model.finetune_blocks == 0 and not p.train.augment.enabled and p.model.box_head == "pooled"


def _check(p: Params) -> None:
    if not p.recipe or not re.fullmatch(r"[\w.-]+", p.recipe):
        raise ParamsError(f"params.yaml: recipe must be a recipe's name (conf/recipe/<name>.yaml), got {p.recipe!r}")
    if p.data.source not in ("synthetic", "download", "local"):
        raise ParamsError(f"params.yaml: data.source must be synthetic, download or local, got {p.data.source!r}")
    if p.data.source == "local" and not p.data.path:
        raise ParamsError("params.yaml: data.source is 'local' but data.path is empty")
    formats = ("belgiumtsc", "gtsrb", "manifest")
    if p.data.format not in ("auto",) + formats:
        raise ParamsError(f"params.yaml: data.format must be auto, {', '.join(formats)}, got {p.data.format!r}")
    if p.data.synthetic.format not in formats:
        raise ParamsError(f"params.yaml: data.synthetic.format must be {', '.join(formats)}, "
                          f"got {p.data.synthetic.format!r}")
    if p.data.source == "synthetic" and p.data.format not in ("auto", p.data.synthetic.format):
        raise ParamsError(f"params.yaml: data.format is {p.data.format!r} but the synthetic data is written as "
                          f"data.synthetic.format {p.data.synthetic.format!r}")
    if p.data.source == "download" and p.data.format not in ("auto", "belgiumtsc"):
        raise ParamsError(f"params.yaml: data.source download fetches BelgiumTSC only; for {p.data.format} use "
                          f"data.source local with data.path")
    if p.data.crop_margin < 0:
        raise ParamsError(f"params.yaml: data.crop_margin must be >= 0 (0: off), got {p.data.crop_margin}")
    if p.data.synthetic.size < 1:  # 2 images per class at least: checked by the generator, which knows its classes
        raise ParamsError(f"params.yaml: data.synthetic.size must be positive, got {p.data.synthetic.size}")
    if p.split.strategy not in ("pole-grouped", "notebook"):
        raise ParamsError(f"params.yaml: split.strategy must be pole-grouped or notebook, got {p.split.strategy!r}")
    if p.split.folds and not (p.split.folds >= 2 and 0 <= p.split.fold < p.split.folds
                              and p.split.strategy == "pole-grouped"):
        raise ParamsError(f"params.yaml: split.folds must be 0 (off) or at least 2 with split.fold from 0 to "
                          f"folds - 1 and split.strategy pole-grouped, got folds={p.split.folds}, "
                          f"fold={p.split.fold}, strategy={p.split.strategy!r}")
    if not 0.0 < p.split.valid_fraction < 1.0 or not 0.0 < p.split.test_fraction < 1.0:
        raise ParamsError(f"params.yaml: split.valid_fraction and split.test_fraction must be in (0, 1), got "
                          f"{p.split.valid_fraction} and {p.split.test_fraction}")


    if p.data.image_size < 32:
        raise ParamsError(f"params.yaml: data.image_size must be at least 32, got {p.data.image_size}")
    if p.model.backbone not in ("mobilenet_v2", "resnet18"):
        raise ParamsError(f"params.yaml: model.backbone must be mobilenet_v2 or resnet18, got {p.model.backbone!r}")
    if not 0.0 <= p.model.dropout < 1.0:
        raise ParamsError(f"params.yaml: model.dropout must be in [0, 1), got {p.model.dropout}")
    if p.train.lr <= 0 or p.train.epochs < 1 or p.train.batch_size < 2:
        raise ParamsError("params.yaml: train.lr must be > 0, train.epochs >= 1 and train.batch_size >= 2")
    for key, value in (("data.synthetic.seed", p.data.synthetic.seed), ("split.seed", p.split.seed),
                       ("train.seed", p.train.seed), ("visualize.seed", p.visualize.seed),
                       ("export.seed", p.export.seed)):
        if value < 0:
            raise ParamsError(f"params.yaml: {key} must be >= 0 (NumPy and PyTorch take non-negative seeds), got {value}")
    if p.model.finetune_blocks < -1:
        raise ParamsError(f"params.yaml: model.finetune_blocks must be -1 (all), 0 (frozen) or the number of last "
                          f"blocks to fine-tune, got {p.model.finetune_blocks}")
    if p.train.backbone_lr <= 0:
        raise ParamsError(f"params.yaml: train.backbone_lr must be > 0, got {p.train.backbone_lr}")
    t = p.train
    for key, value, allowed in (("optimizer", t.optimizer, ("adam", "adamw")), ("schedule", t.schedule, ("none", "cosine")),
                                ("box_loss", t.box_loss, ("l1", "giou", "l1+giou")),
                                ("loss_balance", t.loss_balance, ("learned", "fixed", "uncertainty")),
                                ("class_weights", t.class_weights, ("inverse", "sqrt", "none")),
                                ("box_weights", t.box_weights, ("same", "inverse", "sqrt", "none")),
                                ("keep", t.keep, ("best", "last"))):
        if value not in allowed:
            raise ParamsError(f"params.yaml: train.{key} must be one of {', '.join(allowed)}, got {value!r}")
    if p.model.box_head not in ("pooled", "spatial"):
        raise ParamsError(f"params.yaml: model.box_head must be pooled or spatial, got {p.model.box_head!r}")
    if not 0 <= t.label_smoothing < 1 or t.weight_decay < 0 or t.loss_weight <= 0 or t.warmup_epochs < 0:
        raise ParamsError("params.yaml: train.label_smoothing in [0, 1), weight_decay and warmup_epochs >= 0, "
                          "loss_weight > 0")
    if not 0 <= t.augment.recrop <= 1:
        raise ParamsError(f"params.yaml: train.augment.recrop must be in [0, 1], got {t.augment.recrop}")
    if not 0 <= t.augment.margin <= 2 or not 0 <= t.augment.color < 1 or not 0 <= t.augment.blur <= 1:
        raise ParamsError("params.yaml: train.augment.margin in [0, 2], color in [0, 1), blur in [0, 1]")
    if t.start_size and not 32 <= t.start_size <= p.data.image_size:
        raise ParamsError(f"params.yaml: train.start_size must be 0 (off) or from 32 to data.image_size "
                          f"({p.data.image_size}), got {t.start_size}")
    if t.eval_every < 1 or not 0 <= t.ema_decay < 1:
        raise ParamsError(f"params.yaml: train.eval_every must be >= 1 and train.ema_decay in [0, 1), got "
                          f"{t.eval_every} and {t.ema_decay}")
    if t.start_size and uses_cached_features(p):  # there are no images to resize
        raise ParamsError("params.yaml: train.start_size (progressive resizing) needs the image path: fine-tune "
                          "blocks (model.finetune_blocks), enable train.augment or use the spatial box head")
    if p.export.calibration_images < 1 or p.export.float_convs < 0:
        raise ParamsError(f"params.yaml: export.calibration_images must be at least 1 and export.float_convs at least 0, "
                          f"got {p.export.calibration_images} and {p.export.float_convs}")
    if t.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ParamsError(f"params.yaml: train.precision must be auto, fp32, bf16 or fp16, got {t.precision!r}")
    if t.processes < 1 or t.batch_size % t.processes or t.batch_size // t.processes < 2:
        raise ParamsError(f"params.yaml: train.processes must be >= 1 and divide train.batch_size (the global batch) "
                          f"into shares of at least 2, got processes={t.processes}, batch_size={t.batch_size}")
    if p.train.device not in ("auto", "cpu", "cuda") and not p.train.device.startswith("cuda:"):
        raise ParamsError(f"params.yaml: train.device must be auto, cpu or cuda, got {p.train.device!r}")


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; a missing key takes the default above."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        with open(path) as f:
            raw = yaml.load(f, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    params = _build(Params, raw, "")
    _check(params)
    return params


class Tracked:
    """Read-only view of a params dataclass that records each leaf key read, as 'data.source'."""

    def __init__(self, obj, prefix: str = "", log: set | None = None):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_log", set() if log is None else log)

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        key = f"{self._prefix}{name}"
        if dataclasses.is_dataclass(value):
            return Tracked(value, key + ".", self._log)
        self._log.add(key)
        return value

    def __setattr__(self, name, value):
        raise AttributeError("parameters are read-only")

    def as_dict(self) -> dict:
        """The whole group as plain values (every key in it counts as read)."""
        return {f.name: (getattr(self, f.name).as_dict() if dataclasses.is_dataclass(getattr(self._obj, f.name))
                         else getattr(self, f.name)) for f in dataclasses.fields(self._obj)}

    @property
    def keys_read(self) -> set:
        return set(self._log)


def record_keys(stage: str, tracked: Tracked) -> None:
    """Append the keys a stage read and the tsloc modules it loaded to $TSLOC_PARAMS_LOG (set by the
    tests, which compare both with the stage's `params` and `deps` in dvc.yaml), one JSON line."""
    log = os.environ.get("TSLOC_PARAMS_LOG")
    if log:
        package = Path(__file__).resolve().parent
        modules = sorted(Path(m.__file__).resolve().relative_to(package.parent.parent).as_posix()
                         for name, m in list(sys.modules.items())
                         if (name == "tsloc" or name.startswith("tsloc.")) and getattr(m, "__file__", None))
        with open(log, "a") as f:
            f.write(json.dumps({"stage": stage, "keys": sorted(tracked.keys_read), "modules": modules,
                                "package": str(package)}) + "\n")


def flatten(raw: dict, prefix: str = "") -> dict:
    """A nested params dict as dotted leaf keys and their values, as `-S` and `dvc exp show` name them."""
    out = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def leaf_keys(raw: dict, prefix: str = "") -> set:
    """All dotted leaf keys of a nested dict (to expand a group key declared in dvc.yaml)."""
    return set(flatten(raw, prefix))
