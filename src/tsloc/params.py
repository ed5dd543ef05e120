"""Typed, validated parameters from params.yaml: one place for defaults and errors.

Stages receive a `Tracked` view of the parameters, which records every key the code reads.
The tests compare those records with each stage's `params:` in dvc.yaml, so a key read but not
declared (an experiment that would not rerun the stage) or declared but unused fails a test.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import ParamsError


class _Loader(yaml.SafeLoader):
    """YAML 1.2's numbers, as DVC reads params.yaml: `1e-3` is a float (PyYAML's YAML 1.1 reads a
    string), so `-S train.lr=1e-3` and what DVC shows agree with what the code gets."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def ranged(default, *, ge=None, gt=None, le=None, lt=None, note: str = ""):
    """A field with its allowed range, declared once beside its default (checked by `_build`)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "note": note})


AUTO = "auto"  # a number field's value that leaves it to the pipeline (DetectParams)
SEED = {"ge": 0, "note": "NumPy and PyTorch take non-negative seeds"}
FORMATS = Literal["belgiumtsc", "gtsrb", "manifest"]


@dataclass(frozen=True)
class SyntheticParams:
    size: int = ranged(1800, ge=1)
    seed: int = ranged(0, **SEED)
    format: FORMATS = "belgiumtsc"    # the layout the generator writes


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "download", "local"] = "synthetic"
    format: Literal["auto", "belgiumtsc", "gtsrb", "manifest", "gtsdb"] = "auto"
    path: str | None = None
    crop_margin: float = ranged(0.0, ge=0, note="0: off")  # manifest of whole frames: crop each box with this margin (share of the box)
    base_url: str = "https://btsd.ethz.ch/shareddata/BelgiumTSC/"
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    image_size: int = ranged(128, ge=32)


FROM_SCRATCH = ("convnet",)  # backbones without ImageNet weights (tsloc.backbone): trained whole from random weights


@dataclass(frozen=True)
class ModelParams:
    backbone: Literal["mobilenet_v2", "resnet18", "convnet"] = "mobilenet_v2"  # convnet: small, from scratch (no ImageNet weights)
    weights: str = "imagenet"     # imagenet | none | path to a state dict
    dropout: float = ranged(0.2, ge=0, lt=1)
    finetune_blocks: int = ranged(0, ge=-1, note="-1: all of it, 0: frozen, N: its last N blocks")
    box_head: Literal["pooled", "spatial"] = "pooled"  # pooled (the notebook's) | spatial (a 4 x 4 grid of the feature map)


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool = False
    margin: float = ranged(0.45, ge=0, le=2)   # re-crop: each side's margin ~ U(0, margin) x the box's size
    recrop: float = ranged(1.0, ge=0, le=1)    # share of images re-cropped; the others keep their own framing
    rotation: float = 10.0                    # degrees, either way
    color: float = ranged(0.3, ge=0, lt=1)     # brightness, contrast, saturation factors in 1 +- color
    blur: float = ranged(0.3, ge=0, le=1)      # share of images blurred
    erase: float = ranged(0.0, ge=0, le=1)     # share of images with a patch of the sign covered (occlusion)


@dataclass(frozen=True)
class TrainParams:
    """What the train stage trains; `tsloc.crops.loop.fit` takes these as they are."""
    lr: float = ranged(0.001, gt=0)
    epochs: int = ranged(20, ge=1)
    batch_size: int = ranged(32, ge=2)        # the global batch: with N processes each takes 1/N
    seed: int = ranged(42, **SEED)
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 on the CPU
    processes: int = ranged(1, ge=1)          # ranks under torchrun (gloo on the CPU, NCCL on CUDA)
    compile: bool = False                    # torch.compile the step's network and loss (CUDA graphs on a GPU)
    eval_test_each_epoch: bool = False
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = ranged(0.0, ge=0)
    backbone_lr: float = ranged(0.1, gt=0)    # fine-tuned backbone's lr as a share of lr
    schedule: Literal["none", "cosine"] = "none"  # cosine: after warmup_epochs of linear warm-up
    warmup_epochs: float = ranged(0.0, ge=0)
    label_smoothing: float = ranged(0.0, ge=0, lt=1)
    box_loss: Literal["l1", "giou", "l1+giou"] = "l1"
    loss_balance: Literal["learned", "fixed", "uncertainty"] = "learned"  # learned: the notebook's; uncertainty: Kendall et al. 2018
    loss_weight: float = ranged(100.0, gt=0)  # the box loss is divided by it (learned: its initial value)
    class_weights: Literal["inverse", "sqrt", "none"] = "inverse"  # inverse: the notebook's
    box_weights: Literal["same", "inverse", "sqrt", "none"] = "same"  # the box loss's class weights; same: as class_weights
    keep: Literal["best", "last"] = "best"   # the checkpoint kept: best validation loss (the notebook's) | last epoch
    start_size: int = ranged(0, ge=0)         # progressive resizing: first epoch's input size, growing to data.image_size (0: off)
    eval_every: int = ranged(1, ge=1)         # evaluation passes every N epochs and after the last
    ema_decay: float = ranged(0.0, ge=0, lt=1)  # > 0: evaluate and keep an exponential moving average of the weights
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass(frozen=True)
class VisualizeParams:
    seed: int = ranged(0, **SEED)


@dataclass(frozen=True)
class SplitParams:
    strategy: Literal["pole-grouped", "notebook"] = "pole-grouped"
    valid_fraction: float = ranged(0.2, gt=0, lt=1)
    test_fraction: float = ranged(0.2, gt=0, lt=1)  # a data set without a test side: test carved from it
    seed: int = ranged(42, **SEED)
    folds: int = ranged(0, ge=0)               # 0: off; K >= 2: K folds of Training's signs, fold `fold` is validation
    fold: int = ranged(0, ge=0)


@dataclass(frozen=True)
class ExportParams:
    calibration_images: int = ranged(2048, ge=1)  # training images the int8 ranges are calibrated on (all, when fewer)
    seed: int = ranged(0, **SEED)                 # which training images
    float_convs: int = ranged(3, ge=0)            # the first N convolutions stay float in int8 (MobileNetV2: stem, block 1)


@dataclass(frozen=True)
class SceneSyntheticParams:
    frames: int = ranged(60, ge=1)
    seed: int = ranged(0, **SEED)
    width: int = ranged(800, ge=160)
    height: int = ranged(480, ge=160)
    format: Literal["manifest", "gtsdb"] = "manifest"  # gtsdb: GTSDB's twin, the GTSRB twin's 43 classes


@dataclass(frozen=True)
class ScenesParams:
    """The scene data set (whole frames with any number of signs), beside `data.*` (the crops)."""
    source: Literal["synthetic", "local"] = "synthetic"
    path: str | None = None
    format: Literal["auto", "gtsdb", "manifest"] = "auto"
    valid_fraction: float = ranged(0.2, gt=0, lt=1)
    test_fraction: float = ranged(0.2, gt=0, lt=1)  # carved from the frames when the data set has no test side
    seed: int = ranged(0, **SEED)                   # which frames go where
    synthetic: SceneSyntheticParams = field(default_factory=SceneSyntheticParams)


@dataclass(frozen=True)
class DetectorParams:
    """The scene branch's detector (tsloc.scenes.model), trained on windows cut from the frames."""
    weights: str = "imagenet"                      # the MobileNetV2 trunk's: imagenet | none | a state dict's file
    window: int = ranged(320, ge=64)               # training windows, square, in pixels
    background_share: float = ranged(0.3, ge=0, lt=1)  # of each epoch's windows, cut anywhere (the rest: one per sign)
    hard_negatives: float = ranged(0.0, ge=0, le=1)  # of those, around the detector's false finds (mined halfway)
    scale_jitter: float = ranged(0.2, ge=0, lt=1)  # each window's frame scaled by 1 +- this
    flip: bool = True                              # mirror half the windows
    epochs: int = ranged(6, ge=1)
    batch_size: int = ranged(8, ge=1)
    workers: int | str = ranged(AUTO, ge=0)        # threads cutting the next batch's windows during a step (0: none)
    lr: float = ranged(0.001, gt=0)                # AdamW, cosine after a one-epoch warm-up
    weight_decay: float = ranged(0.0001, ge=0)
    frozen_blocks: int = ranged(4, ge=0, le=14)    # MobileNetV2's first blocks that do not train
    fpn_channels: int = ranged(64, ge=32)          # a multiple of 32 (the head's GroupNorm has 32 groups)
    head_convs: int = ranged(2, ge=1)
    top_block: int = ranged(13, ge=7, le=13)       # MobileNetV2's block for the stride-16 level (7-10: lighter)
    seed: int = ranged(0, **SEED)
    device: str = "auto"                           # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class RefinerParams:
    """The second stage that tightens each box the detector finds (the refiner_train stage): the crop
    branch's network trained on the training frames' signs, cut with real context, re-framed at random."""
    steps: int = ranged(1000, ge=1)                # training steps (epochs: as many as make them, whatever the signs)
    members: int = ranged(1, ge=1)                 # refiners trained from seeds seed, seed + 1, ...; their boxes averaged
    image_size: int = ranged(144, ge=32)           # its input: each crop squashed to this square
    context: float = ranged(0.5, gt=0, le=2)       # real context cut around each training sign, a share of its size per side
    margin: float = ranged(0.15, ge=0, le=1)       # around each found box when refining it
    loss_weight: float = ranged(20.0, gt=0)        # the box loss over it (train.loss_weight)
    batch_size: int = ranged(32, ge=2)
    lr: float = ranged(0.002, gt=0)                # AdamW, cosine after a one-epoch warm-up
    seed: int = ranged(0, **SEED)
    device: str = "auto"                           # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class DetectorExportParams:
    """The detector's ONNX files (the detector_export stage)."""
    calibration_frames: int = ranged(32, ge=1)       # training frames the int8 ranges are calibrated on
    seed: int = ranged(0, **SEED)                    # which training frames
    float_convs: int = ranged(3, ge=0)               # the first N convolutions stay float in int8
    max_ap50_loss: float = ranged(0.005, ge=0, le=1)  # int8 is detect's default only when it loses no more AP50


@dataclass(frozen=True)
class DetectParams:
    """The operating point of finding and naming (the scenes_evaluate stage; `tsloc detect`'s defaults):
    each threshold "auto" (chosen on the validation frames for the targets: tsloc.scenes.operating_point)
    or a number."""
    min_score: float | str = ranged(AUTO, ge=0, le=1)        # the detector's score a detection needs
    min_probability: float | str = ranged(AUTO, ge=0, le=1)  # the crop model's probability a named detection needs
    target_precision: float = ranged(0.95, gt=0, le=1)       # "auto" meets both where it can, the best F1 of them
    target_recall: float = ranged(0.95, gt=0, le=1)
    vote_iou: float = ranged(0.0, ge=0, le=1, note="0: off")   # the detector's kept boxes voted by the candidates over this IoU


@dataclass(frozen=True)
class TrackParams:
    """Signs over a video (`tsloc detect VIDEO --track`, the drive_evaluate stage): ByteTrack's thresholds
    and the inventory's (tsloc.serving.inventory)."""
    high_score: float = ranged(0.5, ge=0, le=1)    # a detection scoring this matches tracks first (ByteTrack's high band)
    new_score: float = ranged(0.5, ge=0, le=1)     # ... and may start a track
    min_iou: float = ranged(0.1, gt=0, le=1)       # the least overlap with a track's predicted box that matches it
    lost_seconds: float = ranged(1.0, gt=0)        # a track unseen this long ends
    min_frames: int = ranged(2, ge=1)              # consecutive frames a track needs before it gets an id
    min_views: int = ranged(3, ge=1)               # views a track needs to be an inventory row


@dataclass(frozen=True)
class DriveParams:
    """The synthetic drive (tsloc.scenes.drive): the video default that the drive_evaluate stage scores."""
    seconds: float = ranged(10.0, gt=0)
    fps: int = ranged(15, ge=1)
    signs: int = ranged(8, ge=1)
    seed: int = ranged(0, **SEED)
    width: int = ranged(800, ge=160)
    height: int = ranged(480, ge=160)
    every: int = ranged(1, ge=1)                   # every Nth frame is searched (tsloc detect --every)


@dataclass(frozen=True)
class Params:
    recipe: str = "notebook"      # the name of the recipe composed into params.yaml (conf/recipe/<name>.yaml)
    data: DataParams = field(default_factory=DataParams)
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    visualize: VisualizeParams = field(default_factory=VisualizeParams)
    export: ExportParams = field(default_factory=ExportParams)
    scenes: ScenesParams = field(default_factory=ScenesParams)
    detector: DetectorParams = field(default_factory=DetectorParams)
    detector_export: DetectorExportParams = field(default_factory=DetectorExportParams)
    refiner: RefinerParams = field(default_factory=RefinerParams)
    detect: DetectParams = field(default_factory=DetectParams)
    track: TrackParams = field(default_factory=TrackParams)
    drive: DriveParams = field(default_factory=DriveParams)


def _range(key: str, value, meta) -> None:
    """The field's declared range (`ranged(...)`), one message naming the key."""
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    if all(b is None for b in (ge, gt, le, lt)):
        return
    ok = ((ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
          and (lt is None or value < lt))
    if ok:
        return
    low, high = (ge, "[") if ge is not None else (gt, "(")
    top, close = (le, "]") if le is not None else (lt, ")")
    if low is not None and top is not None:
        rule = f"in {high}{low}, {top}{close}"
    elif low is not None:
        rule = f"{'>=' if ge is not None else '>'} {low}"
    else:
        rule = f"{'<=' if le is not None else '<'} {top}"
    note = f" ({meta['note']})" if meta.get("note") else ""
    raise ParamsError(f"params.yaml: {key} must be {rule}{note}, got {value!r}")


def _build(cls, raw, where: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys, wrong types, values outside a
    field's `Literal` choices and outside its declared range."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: '{where}' must be a mapping, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
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
        choices = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is Literal else None
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
        elif default == AUTO and {int, float} & set(typing.get_args(hints[name])):  # a number or "auto"
            whole = float not in typing.get_args(hints[name])
            if value != AUTO and (isinstance(value, bool) or not isinstance(value, int if whole else (int, float))):
                raise ParamsError(f"params.yaml: '{key}' must be auto or {'an integer' if whole else 'a number'}, "
                                  f"got {value!r}")
            value = value if value == AUTO or whole else float(value)
        elif value is not None and not isinstance(value, str):
            raise ParamsError(f"params.yaml: '{key}' must be a string, got {value!r}")
        if choices and value not in choices:
            raise ParamsError(f"params.yaml: {key} must be one of {', '.join(choices)}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _range(key, value, f.metadata)
        values[name] = value
    return cls(**values)


def uses_cached_features(p: Params) -> bool:
    """Frozen backbone, no augmentation, pooled box head: the heads can train on features computed once
    per image (exact, and far faster). The one place that decides it, for the check below and the train
    stage."""
    return p.model.finetune_blocks == 0 and not p.train.augment.enabled and p.model.box_head == "pooled"


def _check(p: Params) -> None:
    """The rules that span several fields (each field's own choices and range are checked by `_build`)."""
    if not p.recipe or not re.fullmatch(r"[\w.-]+", p.recipe):
        raise ParamsError(f"params.yaml: recipe must be a recipe's name (conf/recipe/<name>.yaml), got {p.recipe!r}")
    if p.data.source == "local" and not p.data.path:
        raise ParamsError("params.yaml: data.source is 'local' but data.path is empty")
    if p.model.backbone in FROM_SCRATCH and p.model.weights == "imagenet":
        raise ParamsError(f"params.yaml: model.backbone {p.model.backbone} has no ImageNet weights: set model.weights "
                          "to none (trained from scratch) or a state dict's file")
    if p.scenes.source == "local" and not p.scenes.path:
        raise ParamsError("params.yaml: scenes.source is 'local' but scenes.path is empty")
    if p.scenes.valid_fraction + p.scenes.test_fraction >= 1:
        raise ParamsError(f"params.yaml: scenes.valid_fraction + scenes.test_fraction must leave training frames, got "
                          f"{p.scenes.valid_fraction} + {p.scenes.test_fraction}")
    if p.data.source == "synthetic" and p.data.format not in ("auto", p.data.synthetic.format):
        raise ParamsError(f"params.yaml: data.format is {p.data.format!r} but the synthetic data is written as "
                          f"data.synthetic.format {p.data.synthetic.format!r}")
    if p.scenes.source == "synthetic" and p.scenes.format not in ("auto", p.scenes.synthetic.format):
        raise ParamsError(f"params.yaml: scenes.format is {p.scenes.format!r} but the synthetic scenes are written as "
                          f"scenes.synthetic.format {p.scenes.synthetic.format!r}")
    if p.data.source == "download" and p.data.format not in ("auto", "belgiumtsc"):
        raise ParamsError(f"params.yaml: data.source download fetches BelgiumTSC only; for {p.data.format} use "
                          f"data.source local with data.path")
    if p.split.folds and not (p.split.folds >= 2 and 0 <= p.split.fold < p.split.folds
                              and p.split.strategy == "pole-grouped"):
        raise ParamsError(f"params.yaml: split.folds must be 0 (off) or at least 2 with split.fold from 0 to "
                          f"folds - 1 and split.strategy pole-grouped, got folds={p.split.folds}, "
                          f"fold={p.split.fold}, strategy={p.split.strategy!r}")
    t = p.train
    if t.start_size and not 32 <= t.start_size <= p.data.image_size:
        raise ParamsError(f"params.yaml: train.start_size must be 0 (off) or from 32 to data.image_size "
                          f"({p.data.image_size}), got {t.start_size}")
    if t.start_size and uses_cached_features(p):  # there are no images to resize
        raise ParamsError("params.yaml: train.start_size (progressive resizing) needs the image path: fine-tune "
                          "blocks (model.finetune_blocks), enable train.augment or use the spatial box head")
    if t.batch_size % t.processes or t.batch_size // t.processes < 2:
        raise ParamsError(f"params.yaml: train.processes must divide train.batch_size (the global batch) "
                          f"into shares of at least 2, got processes={t.processes}, batch_size={t.batch_size}")
    if p.detector.fpn_channels % 32:
        raise ParamsError(f"params.yaml: detector.fpn_channels must be a multiple of 32 (the FCOS head's GroupNorm has "
                          f"32 groups), got {p.detector.fpn_channels}")
    for key, device in (("train.device", t.device), ("detector.device", p.detector.device)):
        if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
            raise ParamsError(f"params.yaml: {key} must be auto, cpu, cuda or cuda:N, got {device!r}")


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
