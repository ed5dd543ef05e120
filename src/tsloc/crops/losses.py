"""The training objective: class-weighted cross-entropy and box losses, their balance (the
learnable loss weight and log variances belong here, not to the network), and the plain loss that
is reported and that `keep: best` compares."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import giou_loss


def class_weights(labels: np.ndarray, num_classes: int, kind: str = "inverse") -> torch.Tensor:
    """Per-class loss weights indexed by class id (the notebook indexed by frequency rank):
    inverse training frequency (the notebook's: a class of 6 images weighs 50 times one of 300),
    its square root (a milder push towards rare classes), or none (every image alike)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    power = {"inverse": 1.0, "sqrt": 0.5, "none": 0.0}[kind]
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    return torch.tensor(w / w.sum(), dtype=torch.float32)


def box_losses(boxes: torch.Tensor, target_boxes: torch.Tensor, kind: str, image_size: int) -> torch.Tensor:
    """Each image's box loss in pixels of the input: l1 (as the notebook), giou (the generalized IoU
    loss, torchvision's numbers without its host sync: tsloc.boxes.giou_loss, times the input size, so
    that it speaks pixels too) or l1+giou."""
    per_box = boxes.new_zeros(len(boxes))
    if "l1" in kind:
        per_box = per_box + F.l1_loss(boxes, target_boxes, reduction="none").sum(1) * image_size
    if "giou" in kind:
        valid = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        per_box = per_box + giou_loss(valid, target_boxes) * image_size
    return per_box


class Objective(nn.Module):
    """The network and its weighted training loss in one forward, so that DistributedDataParallel
    (which synchronises the gradients of what a forward reached) also sees the balance's parameters.

    balance: learned (the notebook's: box / w, w learnable from `loss_weight`; it can only grow),
    fixed (box / `loss_weight`), or uncertainty (Kendall et al. 2018: exp(-s1) cls + s1 + exp(-s2)
    box + s2, with learned log variances). Classes are weighed by `weights` in the cross-entropy and
    by `box_weights` (else `weights`, as the notebook) in the box loss."""

    def __init__(self, model: nn.Module, weights: torch.Tensor, box_weights: torch.Tensor | None = None, *,
                 image_size: int, box_loss: str = "l1", balance: str = "learned", label_smoothing: float = 0.0,
                 loss_weight: float = 100.0):
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights)
        self.register_buffer("box_weights", weights if box_weights is None else box_weights)
        self.image_size, self.box_loss, self.balance = image_size, box_loss, balance
        self.label_smoothing = label_smoothing
        self.report_weight = float(loss_weight)  # the fixed divisor of the reported loss
        self.loss_weight = nn.Parameter(torch.tensor(float(loss_weight)))
        self.uncertainty = nn.Parameter(torch.zeros(2))  # log variances, if used

    def losses(self, logits, boxes, y, target_boxes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, classification, box), each a class-weighted mean over the batch."""
        w = self.weights[y]
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)
        cls = (ce * w).sum() / w.sum()
        wb = self.box_weights[y]
        box = (box_losses(boxes, target_boxes, self.box_loss, self.image_size) * wb).sum() / wb.sum()
        if self.balance == "uncertainty":
            s = self.uncertainty
            total = torch.exp(-s[0]) * cls + s[0] + torch.exp(-s[1]) * box + s[1]
        elif self.balance == "fixed":
            total = cls + box / self.loss_weight.detach()
        else:
            total = cls + box / self.loss_weight
        return total, cls, box

    def forward(self, inputs, y, target_boxes):
        """(loss, logits, boxes) of a batch."""
        logits, boxes = self.model(inputs)
        return self.losses(logits, boxes, y, target_boxes)[0], logits, boxes

    def reported(self, logits, boxes, y, target_boxes) -> torch.Tensor:
        """Each image's loss as reported and as `keep: best` compares it: plain cross-entropy (no class
        weights, no smoothing) plus the box loss over the fixed initial weight. Its mean over a subset
        depends on neither the batch size nor a learned balance, so epochs and runs compare."""
        return (F.cross_entropy(logits, y, reduction="none")
                + box_losses(boxes, target_boxes, self.box_loss, self.image_size) / self.report_weight)

    def unused(self) -> list[nn.Parameter]:
        """The balance's parameters this balance does not train (DDP waits for a gradient of every
        parameter that requires one)."""
        return {"uncertainty": [self.loss_weight], "fixed": [self.loss_weight, self.uncertainty],
                "learned": [self.uncertainty]}[self.balance]
