"""The learning-rate schedule both training loops use (the crop model's and the detector's): a
linear warm-up, then a cosine to zero, stepped once per batch."""
from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """LambdaLR: the factor grows linearly to 1 over `warmup_steps` (from 1 / warmup_steps at the
    first step, never 0), then falls along a cosine to 0 at `total_steps` and stays there."""
    total, warm = max(1, total_steps), max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
