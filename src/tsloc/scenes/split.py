"""Scenes split by frame: every box of a frame goes where its frame goes. The data set's own test
side (GTSDB's frames 00600-00899, a manifest's `subset: test`) is the test set; without one,
`scenes.test_fraction` of the frames is carved out. Validation is carved from the rest. Frames
with and without signs are shuffled apart, so each subset keeps the data set's share of empty frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.frames import BOX, NO_SIGN
from ..errors import DataError
from ..io import write_csv

SUBSETS = ("train", "valid", "test")


def _carve(frames: pd.DataFrame, share: float, rng: np.random.Generator) -> set:
    """About `share` of the frames, at random, drawn apart among frames with and without signs."""
    chosen = set()
    for _, group in frames.groupby("has_signs"):
        names = group["frame"].to_numpy()
        take = int(round(share * len(names)))
        chosen.update(rng.permutation(names)[:take])
    return chosen


def split_frames(table: pd.DataFrame, valid_fraction: float, test_fraction: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """The table with a `subset` column, and the split's report."""
    frames = table.groupby("frame", sort=True).agg(side=("side", "first"),
                                                   has_signs=("class_id", lambda c: bool((c != NO_SIGN).any())))
    frames = frames.reset_index()
    rng = np.random.default_rng(seed)
    own_test = (frames["side"] == "Testing").any()
    test = set(frames.loc[frames["side"] == "Testing", "frame"]) if own_test else \
        _carve(frames[frames["side"] == "Training"], test_fraction, rng)
    rest = frames[~frames["frame"].isin(test)]
    valid = _carve(rest, valid_fraction / (1 - (0 if own_test else test_fraction)), rng)
    subset = {f: "test" if f in test else "valid" if f in valid else "train" for f in frames["frame"]}
    out = table.assign(subset=table["frame"].map(subset))
    if not (out["subset"] == "train").any():
        raise DataError("scenes split: no training frames left (fewer frames than the valid and test shares need)")
    boxes = out[out["class_id"] != NO_SIGN]
    report = {"frames": {s: int(out.loc[out["subset"] == s, "frame"].nunique()) for s in SUBSETS},
              "boxes": {s: int((boxes["subset"] == s).sum()) for s in SUBSETS},
              "test_side": "the data set's own" if own_test else f"carved: {test_fraction} of the frames",
              "classes_in_test_not_in_train": sorted(int(c) for c in set(boxes.loc[boxes["subset"] == "test", "class_id"])
                                                     - set(boxes.loc[boxes["subset"] == "train", "class_id"]))}
    return out, report


def signs_manifest(split: pd.DataFrame, classes: pd.DataFrame, subsets, out: Path) -> int:
    """The signs of the frames in `subsets` of a scene split, written as a crop manifest
    (`out/manifest.csv`, and `out/classes.csv` with the scene classes' ids and names): the crop
    model can then learn from the scenes' own signs and none of the test frames' (GTSDB without
    GTSRB, docs/scenes.md). Paths are absolute; the signs of a frame are one group. Returns the
    number of signs."""
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown:
        raise DataError(f"no subset {', '.join(map(repr, unknown))} in the scene split (its subsets: {', '.join(SUBSETS)})")
    signs = split[(split["class_id"] != NO_SIGN) & split["subset"].isin(subsets)]
    if signs.empty:
        raise DataError(f"the scene split has no sign in {', '.join(subsets)}")
    frames = signs["frame"].map(lambda f: str(Path(f).resolve()))
    manifest = pd.DataFrame({"path": frames, "label": signs["class_id"].astype(int),
                             **{k: signs[k] for k in BOX},
                             "group": frames.map(lambda f: Path(f).name)})
    write_csv(Path(out) / "classes.csv", classes[["class_id", "name"]])
    write_csv(Path(out) / "manifest.csv", manifest)
    return len(manifest)
