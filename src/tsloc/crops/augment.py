"""Augmentation that keeps boxes right, on batches of uint8 store images (N, S, S, 3).

Geometry: each image is re-cropped to a window that holds the whole box with a margin drawn
independently for each side (0 to `margin` of the box's width or height), so the sign moves
off-centre and its margin changes; the window may leave the image, where edge pixels are
replicated. A small rotation turns the sign about its centre (the box is kept: for the round,
triangular and square signs of BelgiumTSC a few degrees barely change it). One `grid_sample` does
crop, scale and rotation. Occlusion (`erase`, off by default): one flat-coloured rectangle over part
of the sign, as stickers, dirt and branches cover GTSRB's hardest tracks. Photometric: brightness,
contrast, saturation, blur and noise. No flips: they change the meaning of signs (left/right turns, bends).

Device-agnostic: the images may be on a GPU, where every op runs batched. The per-image random
numbers (windows, angles, colour factors) are drawn on the CPU from the one seeded generator and
moved over (a few numbers per image; pinned and asynchronous on a GPU, so no step waits for it:
tsloc.device.to_device), so a run repeats for a seed on any device, and on the CPU the draws and
results are exactly those of the CPU-only version; the image-sized noise is drawn on the images'
device from a seed the CPU generator gives.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..data.store import to_float
from ..device import to_device
from ..params import AugmentParams


def random_windows(boxes: torch.Tensor, max_margin: float, generator: torch.Generator,
                   recrop: float = 1.0) -> torch.Tensor:
    """Windows (N, 4) around relative boxes, each side's margin ~ U(0, max_margin) x box size; a
    share 1 - `recrop` of the images keeps its own framing (the whole image)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    m = torch.rand(boxes.shape, generator=generator) * max_margin * wh
    windows = boxes + m * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    keep = torch.rand(len(boxes), generator=generator) >= recrop
    return torch.where(keep[:, None], torch.tensor([0.0, 0.0, 1.0, 1.0]), windows)


def warp(images: torch.Tensor, boxes: torch.Tensor, windows: torch.Tensor, angles: torch.Tensor,
         size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop float images (N, 3, H, W) to `windows` (relative), rotated by `angles` (radians) about
    the box centre, resized to `size`; edge pixels replicated. Returns the images and the boxes
    relative to the new windows."""
    n = images.shape[0]
    w, h = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    t = (windows[:, :2] + windows[:, 2:]) / 2          # window centre
    c = (boxes[:, :2] + boxes[:, 2:]) / 2              # box centre (rotation pivot)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (N, 2, 2)
    a = rot @ torch.diag_embed(torch.stack([w / 2, h / 2], 1))
    shift = (rot @ (t - c).unsqueeze(-1)).squeeze(-1) + c
    theta = to_device(torch.cat([2 * a, (2 * shift - 1).unsqueeze(-1)], dim=2), images.device)
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    new_boxes = (boxes - windows[:, :2].repeat(1, 2)) / torch.stack([w, h, w, h], 1)
    return out, new_boxes


def photometric(x: torch.Tensor, strength: float, blur_p: float, generator: torch.Generator,
                device_noise: bool | None = None) -> torch.Tensor:
    """Brightness, contrast and saturation factors ~ U(1 - s, 1 + s) per image, a Gaussian blur on a
    share `blur_p` of the batch, light noise. Images float in [0, 1], on any device; `generator`
    is a CPU generator. `device_noise` (default: off the CPU) draws the noise on the images' device
    from a seed of `generator` (the tests take that path on the CPU too)."""
    n, device = x.shape[0], x.device
    u = lambda: to_device(1 + (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1) * strength, device)  # noqa: E731
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * u()                                        # saturation
    x = x.mean((1, 2, 3), keepdim=True) + (x - x.mean((1, 2, 3), keepdim=True)) * u()  # contrast
    x = x * u()                                                        # brightness
    if blur_p > 0:
        pick = torch.rand(n, generator=generator) < blur_p
        if pick.any():
            sigma = float(0.3 + 0.9 * torch.rand(1, generator=generator))
            rows = to_device(pick.nonzero().squeeze(1), device)  # indices, not a mask: a mask's count waits for the GPU
            x[rows] = TF.gaussian_blur(x[rows], kernel_size=[5, 5], sigma=[sigma, sigma])
    if not (device.type != "cpu" if device_noise is None else device_noise):
        noise = torch.randn(x.shape, generator=generator)
    else:  # image-sized: drawn where the images are, from a seed of the CPU generator
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        noise = torch.randn(x.shape, generator=torch.Generator(device).manual_seed(seed), device=device)
    x = x + noise * to_device(0.02 * torch.rand(n, 1, 1, 1, generator=generator), device)
    return x.clamp(0, 1)


def occlude(x: torch.Tensor, boxes: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """On a share of float images (N, 3, H, W), one rectangle inside the relative box painted a flat random
    colour: each side 15-40% of the box's, anywhere in it. Draws on the CPU generator, painted on any
    device in one batched `where` (no per-image loop)."""
    n, _, h, w = x.shape
    size = boxes[:, 2:] - boxes[:, :2]
    side = (0.15 + 0.25 * torch.rand(n, 2, generator=generator)) * size
    lo = boxes[:, :2] + torch.rand(n, 2, generator=generator) * (size - side)
    pick = torch.rand(n, generator=generator) < share
    colour = to_device(torch.rand(n, 3, 1, 1, generator=generator), x.device)
    lo, hi = to_device(torch.cat([lo, lo + side * pick[:, None]], 1), x.device).split(2, 1)  # unpicked: empty
    xs = (torch.arange(w, device=x.device) + 0.5) / w   # pixel centres, relative
    ys = (torch.arange(h, device=x.device) + 0.5) / h
    inside_x = (xs >= lo[:, :1]) & (xs < hi[:, :1])     # (N, W)
    inside_y = (ys >= lo[:, 1:]) & (ys < hi[:, 1:])     # (N, H)
    covered = inside_y[:, :, None] & inside_x[:, None, :]
    return torch.where(covered[:, None], colour, x)


def augment(images: torch.Tensor, boxes: torch.Tensor, *, margin: float, rotation: float, color: float,
            blur: float, generator: torch.Generator, recrop: float = 1.0, erase: float = 0.0,
            size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, S, S, 3) store images and relative boxes -> augmented float (N, 3, size, size) in
    [0, 1] (size S unless given: progressive resizing) and their boxes. `erase` 0 draws no numbers for
    occlusion: the other settings' draws, and so their runs, stay as they were."""
    size = size or images.shape[1]
    x = to_float(images)
    windows = random_windows(boxes, margin, generator, recrop)
    angles = (2 * torch.rand(len(boxes), generator=generator) - 1) * math.radians(rotation)
    x, boxes = warp(x, boxes, windows, angles, size)
    if erase > 0:
        x = occlude(x, boxes, erase, generator)
    return photometric(x, color, blur, generator), boxes


def settings(a) -> dict | None:
    """`augment`'s keyword arguments from a `train.augment` group (each field but `enabled`, so a new field
    reaches it without a list to keep in step); None when it is off."""
    if not a.enabled:
        return None
    return {f.name: getattr(a, f.name) for f in dataclasses.fields(AugmentParams) if f.name != "enabled"}
