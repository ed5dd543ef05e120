"""Stage `features`: decode every image once into the uint8 store and, for a recipe that trains on them,
run the frozen backbone once per image."""
from __future__ import annotations

import numpy as np

from ..backbone import backbone_features
from ..crops.features import feature_extractor
from ..data.store import NpyWriter, write_store
from ..data.table import load_metadata
from ..device import select_device
from ..io import atomic_path
from ..params import uses_cached_features
from ..paths import IMAGE_STORE, POOLED
from . import record_keys, tracked_params


def run(params_file: str = "params.yaml") -> dict:
    """Decode every image once into the array store; run the frozen backbone once per image where the
    train stage reads its pooled features (a frozen backbone without augmentation: `uses_cached_features`).
    A recipe that fine-tunes or augments never reads them, so its pooled.npy has no rows: the backbone's
    pass was most of the stage (GTSRB at 144 px: docs/experiments.md)."""
    p = tracked_params(params_file)
    meta = load_metadata()
    body, channels = backbone_features(p.model.backbone, p.model.weights)  # before decoding: bad weights fail fast
    rows = len(meta) if uses_cached_features(p) else 0
    features = feature_extractor(body, select_device(p.train.device)) if rows else None
    # Decoded, written and run through the backbone chunk by chunk, both files written as they come:
    # memory holds one chunk whatever the number of images.
    with (atomic_path(IMAGE_STORE) as images, atomic_path(POOLED) as tmp,
          NpyWriter(tmp, (rows, channels), np.float32) as pooled):
        shape = write_store(meta, p.data.image_size, images,
                            on_chunk=(lambda chunk: pooled.write(features(chunk))) if features else None)
    record_keys("features", p)
    return {"images": int(shape[0]), "store_shape": list(shape), "features": list(pooled.shape)}
