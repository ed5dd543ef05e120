"""The backbone: a torchvision network up to its last feature map (or `convnet`, a small one trained from
scratch for small crops), as a flat sequence of blocks, with its weights (tsloc.weights), and the
BatchNorm folding that runs its frozen blocks faster. The features stage needs only this, not the
heads or the training."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models

from .errors import WeightsError
from .params import FROM_SCRATCH
from .weights import load_weights

CHANNELS = {"mobilenet_v2": 1280, "resnet18": 512, "convnet": 256}  # channels of each backbone's last feature map


def convnet(width: int = 32) -> nn.Sequential:
    """Seven 3x3 convolutions (each with BatchNorm and ReLU) in four stages of width, 2x, 4x and 8x
    width channels, halved in size between stages: a VGG-style network of 0.6 M weights for small
    crops at their own size (48 px: a 6 x 6 last map). Trained from scratch on GTSRB's 31-84 px
    crops it names held-out tracks better than ImageNet's MobileNetV2 fine-tuned at 144 px, in less
    time (docs/experiments.md: the `small` recipe)."""
    def conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    w = width
    return nn.Sequential(conv(3, w), conv(w, w), nn.MaxPool2d(2), conv(w, 2 * w), conv(2 * w, 2 * w), nn.MaxPool2d(2),
                         conv(2 * w, 4 * w), conv(4 * w, 4 * w), nn.MaxPool2d(2), conv(4 * w, 8 * w))


def backbone_features(backbone: str, weights: str) -> tuple[nn.Sequential, int]:
    """The backbone up to its last feature map (N, C, h, w), with `weights`: imagenet, none, or a file."""
    if backbone not in CHANNELS:
        raise WeightsError(f"unknown backbone {backbone!r}; choose one of {sorted(CHANNELS)}")
    net = convnet() if backbone in FROM_SCRATCH else models.get_model(backbone, weights=None)
    load_weights(net, backbone, weights)
    # A flat sequence of blocks, so that fine-tuning can unfreeze the last N of them (the pooling
    # that followed them has no weights: models saved with it load unchanged).
    if backbone == "mobilenet_v2":
        blocks = [*net.features]
    elif backbone in FROM_SCRATCH:
        blocks = [*net]  # convnet is its blocks already
    else:
        blocks = list(net.children())[:-2]
    return nn.Sequential(*blocks), CHANNELS[backbone]


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
