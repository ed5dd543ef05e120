"""The one box convention, and the conversions and IoU helpers that everything else uses.

On disk (metadata): (left, top, right, bottom) in pixel edges of the image as it is, right and
bottom exclusive (a box covering columns 3..9 is left=3, right=10). In tensors: the same order,
relative to the image (0..1), so resizing the image needs no change and the loss, IoU and predict
all share one frame.
"""
from __future__ import annotations

import numpy as np
import torch


def to_relative(boxes: torch.Tensor, width: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """Pixel boxes (N, 4) of images of the given sizes (N,) to relative boxes."""
    scale = torch.stack([width, height, width, height], dim=-1).to(boxes.dtype)
    return boxes / scale


def to_pixels(boxes: torch.Tensor, width: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """Relative boxes (N, 4) to pixels of images of the given sizes (N,)."""
    scale = torch.stack([width, height, width, height], dim=-1).to(boxes.dtype)
    return boxes * scale


def make_valid(boxes: torch.Tensor) -> torch.Tensor:
    """Turn any 4 numbers into a valid relative box: left <= right, top <= bottom, inside [0, 1]."""
    boxes = boxes.clamp(0.0, 1.0)
    starts, ends = boxes[:, :2], boxes[:, 2:]  # (left, top) and (right, bottom): 6 operations once exported, not 15
    return torch.cat([torch.minimum(starts, ends), torch.maximum(starts, ends)], dim=1)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (torchvision's box_iou gives all pairs; we need the diagonal)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def giou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - generalized IoU of a[i] with b[i]: torchvision.ops.generalized_box_iou_loss's numbers (its
    formula, in its order), but the intersection from clamped sides instead of its boolean-mask
    assignment, whose count makes a GPU step wait for the host (the same values: a side under zero
    gives zero either way)."""
    x1, y1, x2, y2 = a.unbind(dim=-1)
    x1g, y1g, x2g, y2g = b.unbind(dim=-1)
    inter = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0) * (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - ((area_c - union) / (area_c + eps)))


def relative_boxes(table) -> torch.Tensor:
    """A table's pixel boxes (columns left, top, right, bottom, width, height: the metadata's) in
    the tensor frame."""
    b = torch.tensor(table[["left", "top", "right", "bottom"]].to_numpy(np.float64))
    w, h = (torch.tensor(table[c].to_numpy(np.float64)) for c in ("width", "height"))
    return to_relative(b, w, h).float()
