"""The frozen backbone's pass over uint8 images: pooled features computed once per image.

With a frozen backbone and no augmentation the backbone's output for an image never changes, so
the features stage runs it once and the heads train on those features (`tsloc.crops.batches.features_source`);
the plain path runs the backbone every batch and gives the same result (a test compares them).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..backbone import fuse_conv_bn, pool
from ..data.store import normalise


@torch.no_grad()
def feature_extractor(backbone: torch.nn.Module, device: torch.device, batch_size: int = 64):
    """A function from uint8 images (N, S, S, 3) to pooled backbone features (N, C), the backbone fused
    once and in eval mode; batches of `batch_size` (a chunked caller keeps its chunks a multiple of it,
    so the numbers do not depend on the chunking)."""
    backbone = fuse_conv_bn(backbone).to(device, memory_format=torch.channels_last)

    @torch.no_grad()
    def run(images, progress: bool = False) -> np.ndarray:
        out = []
        for start in tqdm(range(0, len(images), batch_size), desc="backbone features", unit="batch",
                          disable=not progress, leave=False):
            x = normalise(images[start:start + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
            out.append(pool(backbone(x)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    return run


def compute_features(backbone: torch.nn.Module, images: np.ndarray, device: torch.device,
                     batch_size: int = 64) -> np.ndarray:
    """Pooled backbone features (N, C) of uint8 images, the backbone in eval mode."""
    return feature_extractor(backbone, device, batch_size)(images, progress=True)
