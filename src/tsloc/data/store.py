"""A compact array store: every image decoded once and resized to the model's input size.

uint8 (N, S, S, 3), in the row order of data/metadata.csv. The resize squashes the image to a square,
as the notebook does, which leaves relative boxes unchanged."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..model import IMAGENET_MEAN, IMAGENET_STD


def to_input(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image as the network sees it: squashed to size x size, uint8 (S, S, 3). The one place
    training, evaluation and predict prepare pixels, so they cannot drift apart."""
    return np.asarray(img.resize((size, size), Image.BILINEAR))


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)


def load_image(path: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return to_input(img.convert("RGB"), size)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def build_store(meta: pd.DataFrame, size: int) -> np.ndarray:
    store = np.empty((len(meta), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(meta["path"], desc="decode images", unit="img")):
        store[i] = load_image(path, size)
    return store


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S), ImageNet mean and std."""
    return standardise(to_float(images))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1], (N, 3, S, S) -> ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
