"""The network: a torchvision backbone cut into blocks (tsloc.backbone; some frozen, the last
fine-tuned) and two heads, one for the classes and one for the box. What it is trained with lives
in tsloc.crops.losses, how it is saved in tsloc.crops.checkpoint."""
from __future__ import annotations

import torch
from torch import nn

from ..backbone import backbone_features, fuse_conv_bn, pool

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
    heads (BatchNorm1d + Linear) for the classes and the 4 relative box numbers. `trainable_blocks`
    > 0 fine-tunes the last blocks of the backbone (-1: all of it); `box` chooses the box head (see `box_head`).

    Convolutions run channels-last (about 1.3x faster on CPU for MobileNetV2, benchmarks/speed.py)."""

    def __init__(self, backbone: nn.Sequential, features: int, num_classes: int, dropout: float = 0.2,
                 image_size: int = 128, trainable_blocks: int = 0, box: str = "pooled"):
        super().__init__()
        self.box_kind, self.image_size = box, int(image_size)
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
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(nn.BatchNorm1d(features), nn.Linear(features, num_classes))
        self.box = box_head(box, features)
        self.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def start_boxes_at(self, box: torch.Tensor) -> None:
        """Start the box head exactly at a given box (the mean training box): zero weights, that box
        as bias. Training then learns deviations from the constant-box baseline; with the default
        init the head starts at noise of about 0.6 image widths (1280 standardised features). `box`
        may live on another device than the model (the box statistics are computed on the CPU)."""
        bias = self.box[-1].bias
        self.box[-1].weight.zero_()
        bias.copy_(box.reshape(4).to(bias.device) * self.box_scale)

    @property
    def num_classes(self) -> int:
        return self.classifier[-1].out_features

    @property
    def frozen(self) -> bool:
        return self.split_at >= len(self.backbone)

    def train(self, mode: bool = True):
        """Frozen means frozen: the frozen blocks stay in eval mode (no BatchNorm statistics
        updates), which is also what makes cached features exact. Training runs them through a
        copy with BatchNorm folded into the convolutions, made again whenever their tensors were
        replaced or changed in place since (a load, a move), so that it always matches the weights;
        else the same copy, so that a compiled step (train.compile) keeps its graph across epochs."""
        super().train(mode)
        for block in self.backbone[:self.split_at]:
            block.eval()
        if self.frozen:
            self.backbone.eval()
        frozen = self.backbone[:self.split_at]
        stamp = tuple((t.data_ptr(), t._version) for t in (*frozen.parameters(), *frozen.buffers()))
        if mode and self.__dict__.get("_frozen_stamp") != stamp:
            self.__dict__["_frozen_fused"], self.__dict__["_frozen_stamp"] = fuse_conv_bn(frozen), stamp
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, h, w); the frozen blocks run without autograd."""
        images = images.contiguous(memory_format=torch.channels_last)
        frozen = (self.__dict__.get("_frozen_fused") if self.training else None) or self.backbone[:self.split_at]
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


class Ensemble(nn.Module):
    """Several SignNets of one shape trained from different seeds, their class logits and boxes
    averaged: the refiner's `refiner.members` (the mean of three refiners' boxes gains more finding
    AP above IoU 0.8 than any one refiner trained three times as long: docs/benchmarks.md). Answers
    as one SignNet does; its file holds every member (tsloc.crops.checkpoint). Members fine-tuned from
    the same weights begin with the same blocks (the frozen ones, ImageNet's): `shared` counts them,
    decided from the weights when built; those run once, each member's own blocks and heads on their
    output (three members cost the frozen trunk once, not three times)."""

    def __init__(self, members: list[SignNet]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.box_kind, self.image_size, self.dropout = members[0].box_kind, members[0].image_size, members[0].dropout
        self.shared = self._count_shared()

    def _count_shared(self) -> int:
        """How many leading backbone blocks hold the same weights in every member."""
        first, blocks = self.members[0], len(self.members[0].backbone)
        same = lambda i: all(  # noqa: E731
            all(torch.equal(a, b) for a, b in zip(m.backbone[i].state_dict().values(),
                                                  first.backbone[i].state_dict().values())) for m in self.members[1:])
        return next((i for i in range(blocks) if not same(i)), blocks)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, then `shared` counted again from the weights just loaded."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.shared = self._count_shared()
        return result

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.members[0].backbone[:self.shared](x.contiguous(memory_format=torch.channels_last))
        logits, boxes = zip(*(m.heads(m.backbone[self.shared:](x)) for m in self.members))
        return torch.stack(logits).mean(0), torch.stack(boxes).mean(0)


def build_model(backbone: str, weights: str, num_classes: int, dropout: float = 0.2,
                image_size: int = 128, trainable_blocks: int = 0, box: str = "pooled") -> SignNet:
    body, features = backbone_features(backbone, weights)
    return SignNet(body, features, num_classes, dropout, image_size=image_size,
                   trainable_blocks=trainable_blocks, box=box)
