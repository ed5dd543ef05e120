"""A compact array store: every image decoded once and resized to the model's input size.

uint8 (N, S, S, 3), in the row order of data/metadata.csv. The resize squashes the image to a square,
as the notebook does, which leaves relative boxes unchanged. It is written to disk as it is decoded
(a memory-mapped .npy), in chunks decoded by parallel threads, so memory stays bounded whatever the
number of images (GTSRB has 50,000)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from ..model import IMAGENET_MEAN, IMAGENET_STD
from .images import open_rgb


def to_input(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image as the network sees it: squashed to size x size, uint8 (S, S, 3). The one place
    training, evaluation and predict prepare pixels, so they cannot drift apart."""
    return np.asarray(img.resize((size, size), Image.BILINEAR))


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)


def load_image(path: str, size: int) -> np.ndarray:
    return to_input(open_rgb(path), size)


def build_store(meta: pd.DataFrame, size: int, path: str | os.PathLike | None = None,
                threads: int = 8, chunk: int = 512) -> np.ndarray:
    """Decode every image of `meta` into (N, S, S, 3) uint8: in memory, or into the .npy at `path`
    (memory-mapped, written chunk by chunk)."""
    shape = (len(meta), size, size, 3)
    store = (np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape) if path is not None
             else np.empty(shape, dtype=np.uint8))
    paths = meta["path"].tolist()
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(paths), desc="decode images", unit="img") as bar:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            for i, image in enumerate(pool.map(lambda p: load_image(p, size), part), start):
                store[i] = image
            bar.update(len(part))
    if path is not None:
        store.flush()
    return store


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S), ImageNet mean and std."""
    return standardise(to_float(images))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1], (N, 3, S, S) -> ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
