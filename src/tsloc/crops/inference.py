"""The model as it answers: uint8 images in, class probabilities and boxes out. predict, evaluate,
compare and the exported files all run this one definition, so the PyTorch model and its ONNX
exports cannot drift apart.

`Predictor` is the trained network wrapped with its input preparation and output activation
(uint8 RGB (N, S, S, 3) as decoded and squashed -> probabilities (N, C) and valid relative boxes
(N, 4: left, top, right, bottom, as shares of the width and height)); the ONNX files are it traced
(tsloc.crops.export), `TorchBackend` runs it on a `.pt` file. tsloc.serving.backend picks the backend for a file.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import make_valid
from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .model import Ensemble, SignNet


class RawInputConv(nn.Module):
    """A network's first convolution taking raw RGB in 0..255 instead of normalised images: the
    ImageNet normalisation folded in. Its weights are scaled by 1 / (255 std) per input channel and
    the mean's share (-mean / std through the weights) goes into the bias. The zero padding of a
    normalised image is the mean colour in raw values, so the input is padded with that colour
    (zeros, then a constant frame added) and the convolution runs unpadded. Equal to
    normalise-then-convolve to float rounding (1e-6), with no pass over the input but the padding:
    in ONNX Runtime the separate normalisation (a 1x1 convolution with 3 channels) took 9% of the
    int8 model's time at batch 1, and one more rounding in int8 (docs/benchmarks.md#inference)."""

    def __init__(self, conv: nn.Conv2d, size: int):
        super().__init__()
        (ph, pw), w = conv.padding, conv.weight.detach()
        device = w.device  # built where the model is (a model on a GPU stays there)
        mean, std = torch.tensor(IMAGENET_MEAN, device=device), torch.tensor(IMAGENET_STD, device=device)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                              conv.dilation, conv.groups, bias=True, device=device)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, device=device)
        with torch.no_grad():
            self.conv.weight.copy_(w / (255 * std).view(1, 3, 1, 1))
            self.conv.bias.copy_(bias - (w * (mean / std).view(1, 3, 1, 1)).sum((1, 2, 3)))
        self.pad = (pw, pw, ph, ph)
        frame = torch.ones(1, 3, size + 2 * ph, size + 2 * pw, device=device)
        frame[..., ph:ph + size, pw:pw + size] = 0
        self.register_buffer("frame", frame * (255 * mean).view(1, 3, 1, 1), persistent=False)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(raw, self.pad) + self.frame)


def fold_normalisation(model: SignNet) -> SignNet:
    """A copy of the model (in eval mode) whose first convolution takes raw RGB (`RawInputConv`);
    both backbones start with one."""
    model = copy.deepcopy(model).eval()
    parent = model.backbone
    while not isinstance(parent[0], nn.Conv2d):
        parent = parent[0]
    parent[0] = RawInputConv(parent[0], model.image_size)
    return model


def fold_box_pooling(model: SignNet) -> SignNet:
    """The spatial box head's adaptive pooling and 1x1 convolution as one convolution, in place,
    where the pooling windows are all alike (a 5 x 5 feature map to 4 x 4: windows of 2 with stride
    1, MobileNetV2 at 144 px): averaging k x k windows and then a 1x1 convolution is a k x k
    convolution with the weights divided by k^2. The same numbers (to float rounding); exported,
    adaptive pooling of a size that does not divide becomes gathers, transposes and a mean (about a
    tenth of the int8 model's time at batch 1), and int8 average pooling is slow in ONNX Runtime."""
    if model.box_kind != "spatial" or not isinstance(model.box[0], nn.AdaptiveAvgPool2d):
        return model
    pool, conv = model.box[0], model.box[1]
    with torch.no_grad():
        size = model.image_size
        n = model.features(torch.zeros(1, 3, size, size, device=model.box_scale.device)).shape[-1]
    out = pool.output_size if isinstance(pool.output_size, int) else pool.output_size[0]
    starts = [i * n // out for i in range(out)]
    sizes = {-(-(i + 1) * n // out) - start for i, start in enumerate(starts)}
    strides = {b - a for a, b in zip(starts, starts[1:])} or {1}
    if len(sizes) != 1 or len(strides) != 1 or conv.kernel_size != (1, 1):
        return model
    k, stride = sizes.pop(), strides.pop()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, k, stride, bias=conv.bias is not None,
                       device=conv.weight.device)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.expand(-1, -1, k, k) / k ** 2)
        if conv.bias is not None:
            folded.bias.copy_(conv.bias)
    model.box[0], model.box[1] = nn.Identity(), folded.to(memory_format=torch.channels_last)
    return model


class Predictor(nn.Module):
    """uint8 RGB images (N, S, S, 3) -> (probabilities (N, C), valid relative boxes (N, 4)).

    The model's first convolution takes the images as they come, 0..255 (`fold_normalisation`, on a
    copy: the trained model is untouched): the normalisation costs nothing. The spatial box head's
    pooling is folded into its convolution where it can be (`fold_box_pooling`); an Ensemble's in each member."""

    def __init__(self, model: SignNet | Ensemble):
        super().__init__()
        fold = lambda m: fold_box_pooling(fold_normalisation(m))  # noqa: E731
        self.model = Ensemble([fold(m) for m in model.members]) if isinstance(model, Ensemble) else fold(model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, boxes = self.model(images.permute(0, 3, 1, 2).float())
        return torch.softmax(logits.float(), 1), make_valid(boxes.float())


class TorchBackend:
    """A `.pt` checkpoint through PyTorch (eager; channels-last convolutions)."""

    name = "pytorch"

    def __init__(self, model: SignNet, meta: dict, device="cpu"):
        self.meta, self.device = meta, torch.device(device)
        self.net = Predictor(model).to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, boxes = self.net(torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device))  # a copy: the store is read-only
        return probs.cpu().numpy(), boxes.cpu().numpy()
