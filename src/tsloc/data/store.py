"""A compact array store: every image decoded once and resized to the model's input size.

uint8 (N, S, S, 3), in the row order of data/metadata.csv. The resize squashes the image to a square,
as the notebook does, which leaves relative boxes unchanged. It is written to disk as it is decoded,
in chunks decoded by parallel threads, so memory stays bounded whatever the number of images (GTSRB
has 50,000); training and evaluation read it memory-mapped."""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .images import open_rgb, to_input


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)


def load_image(path: str, size: int) -> np.ndarray:
    return to_input(open_rgb(path), size)


def decoded_chunks(paths: list[str], size: int, threads: int = 8, chunk: int = 512):
    """Yield the images of `paths` decoded (by parallel threads) as uint8 (n, S, S, 3) arrays of `chunk`."""
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(paths), desc="decode images", unit="img") as bar:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            yield np.stack(list(pool.map(lambda p: load_image(p, size), part)))
            bar.update(len(part))


class NpyWriter:
    """An .npy file written piece by piece along its first axis, with plain writes (no memory map, so
    the process holds only the piece in hand). The bytes are those `np.save` writes for the whole array."""

    def __init__(self, path: str | os.PathLike, shape: tuple, dtype):
        self.shape, self.dtype, self.rows = tuple(shape), np.dtype(dtype), 0
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, *self.shape[1:]), self.dtype))
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {**header, "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} do not fit an array of {self.shape} at row {self.rows}")
        self.file.write(rows.tobytes())
        self.rows += len(rows)

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.file.close()
        if kind is None and self.rows != self.shape[0]:
            raise ValueError(f"{self.file.name}: {self.rows} rows written of {self.shape[0]}")


def write_store(meta: pd.DataFrame, size: int, path: str | os.PathLike, on_chunk=None, threads: int = 8,
                chunk: int = 512) -> tuple:
    """Decode every image of `meta` into the .npy file `path` (uint8 (N, S, S, 3)) chunk by chunk,
    calling `on_chunk` on each chunk: memory holds one chunk, whatever N. Returns the shape."""
    shape = (len(meta), size, size, 3)
    with NpyWriter(path, shape, np.uint8) as out:
        for images in decoded_chunks(meta["path"].tolist(), size, threads, chunk) if len(meta) else ():
            out.write(images)
            if on_chunk is not None:
                on_chunk(images)
    return shape


def build_store(meta: pd.DataFrame, size: int, threads: int = 8, chunk: int = 512) -> np.ndarray:
    """The same images in memory (tests, benchmarks)."""
    parts = list(decoded_chunks(meta["path"].tolist(), size, threads, chunk))
    return np.concatenate(parts) if parts else np.empty((0, size, size, 3), np.uint8)


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S), ImageNet mean and std."""
    return standardise(to_float(images))


@functools.cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std (1, 3, 1, 1) on `device`, made once: a tensor built from Python numbers on a
    GPU is a host-to-device copy, which waits for the GPU's queue at every batch."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1], (N, 3, S, S) -> ImageNet mean and std."""
    mean, std = _imagenet_stats(x.device)
    return (x - mean) / std
