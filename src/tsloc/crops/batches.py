"""Where training batches come from: cached pooled features, or images cut from the uint8 store
(augmented on the images' device when training), and the size schedule of progressive resizing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import standardise, to_float
from ..device import to_device
from .augment import augment


@dataclass
class Batches:
    """One subset: `fetch(indices, train, size)` gives the network's input for those rows (pooled
    features, or standardised images on the device) and their relative boxes (augmentation may
    move them)."""
    fetch: object
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self):
        return len(self.labels)


def features_source(features: np.ndarray, boxes: torch.Tensor, device):
    feats = torch.as_tensor(features)
    return lambda idx, train, size=None: (to_device(feats[idx], device), to_device(boxes[idx], device))


STORE_SHARE = 0.5  # the uint8 store moves to the GPU when it takes at most this share of its free memory


def place_store(images: np.ndarray, device) -> torch.Tensor:
    """The uint8 image store where batches are cut from: on the CPU as it is; on a GPU, copied there
    once when it fits (`STORE_SHARE` of the free memory), else kept in pinned host memory so that
    each batch's copy is asynchronous."""
    store = torch.from_numpy(np.ascontiguousarray(images))
    device = torch.device(device)
    if device.type != "cuda":
        return store
    free, _ = torch.cuda.mem_get_info(device)
    return store.to(device) if store.nbytes <= STORE_SHARE * free else store.pin_memory()


def images_source(images: np.ndarray, boxes: torch.Tensor, device, augmentation: dict | None = None,
                  generator: torch.Generator | None = None):
    """The plain path: standardised images for the whole network (augmented when training with
    `augmentation`: keyword arguments of `tsloc.crops.augment.augment`, run as batched tensor ops on the
    device), resized to `size` when given (relative boxes do not change with the size)."""
    store = place_store(images, device)
    device = torch.device(device)

    def run(idx, train, size=None):
        if store.device.type == device.type:           # the CPU, or the whole store on the GPU
            batch = store[to_device(idx, device)]
        else:                                          # the store in host memory: the batch copied asynchronously
            batch = to_device(store[idx], device)
        b = boxes[idx]
        if train and augmentation:
            x, b = augment(batch, b, generator=generator, size=size, **augmentation)
        else:
            x = to_float(batch)
            if size and size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return standardise(x), to_device(b, device)
    return run


def epoch_sizes(start: int, full: int, epochs: int, step: int = 16) -> list[int]:
    """Progressive resizing: input sizes growing linearly from `start` at the first epoch to `full`
    at the last, rounded to multiples of `step` (few distinct shapes). Early epochs, which learn
    coarse features, cost (start / full)^2 as much; the last ones train at the size the model is
    evaluated at."""
    if epochs == 1:
        return [full]
    sizes = [start + (full - start) * e / (epochs - 1) for e in range(epochs)]
    return [min(full, max(step, int(round(s / step)) * step)) if e < epochs - 1 else full
            for e, s in enumerate(sizes)]
