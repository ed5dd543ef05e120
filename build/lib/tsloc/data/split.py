"""Train/valid/test splits, and the check that no physical sign (class + group) lands on two sides.

A sign is the metadata's `group` (BelgiumTSC's pole, GTSRB's track, a manifest's group). A data set
without a test side (a manifest without `subset`) first has its test set carved from it the way
validation is carved below (`split.test_fraction`, by whole signs, per class); the carved images
count as the Testing side from then on.

`pole-grouped` (default): the official Testing set is the test set (comparable with published
results); validation is carved from Training, per class (stratified) and by whole signs (grouped),
always leaving a class at least one sign in train. Signs that the official sets already share are
kept in train, so the split adds no shared sign to the ones the official sets have. With
`split.folds` K >= 2 the same holds per fold, and the K runs (`split.fold` 0 to K-1) validate
every Training sign once: cross-validation for choosing between configurations.

`notebook`: the notebook's split, replayed: all of Training is train; Testing's rows (duplicates
included, in the notebook's order) are shuffled with NumPy's legacy seed 42, the first 57% are
validation and the rest test. An image whose duplicate rows fall on both sides goes to validation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError

NOTEBOOK_VALID_SHARE = 0.57
NOTEBOOK_SEED = 42
SUBSETS = ("train", "valid", "test")


def sign_ids(df: pd.DataFrame) -> pd.Series:
    return df["class_id"].astype(str) + "/" + df["group"].astype(str)


def official_shared_signs(meta: pd.DataFrame) -> list[str]:
    """Physical signs with views in both official sets (6 in the real data)."""
    signs = sign_ids(meta)
    both = set(signs[meta["split"] == "Training"]) & set(signs[meta["split"] == "Testing"])
    return sorted(both)


def _by_class(meta: pd.DataFrame, seed: int, choose) -> pd.Series:
    """Subset per image: Training is train except the signs that `choose(class_id, order, sizes)` names
    for validation, class by class; `order` is the class's signs in a seeded order, less those the
    official sets share (they stay in train), `sizes` its images per sign. Testing is test."""
    rng = np.random.default_rng(seed)
    subset = pd.Series(np.where(meta["split"] == "Training", "train", "test"), index=meta.index)
    keep_in_train = set(official_shared_signs(meta))
    train = meta[meta["split"] == "Training"]
    signs = sign_ids(train)
    for class_id in sorted(train["class_id"].unique()):
        in_class = train["class_id"] == class_id
        sizes = signs[in_class].value_counts().sort_index()
        order = [s for s in rng.permutation(sizes.index.to_numpy()) if s not in keep_in_train]
        subset[train.index[signs.isin(choose(class_id, order, sizes)) & in_class]] = "valid"
    return subset


def pole_grouped(meta: pd.DataFrame, valid_fraction: float, seed: int) -> pd.Series:
    """Subset per image: valid carved by whole signs from each class of Training."""
    def choose(class_id, order, sizes):
        target = valid_fraction * sizes.sum()
        chosen, taken = [], 0
        for s in order[:max(0, len(sizes) - 1)]:  # never the class's last sign
            if taken >= target or abs(taken + sizes[s] - target) > abs(taken - target):
                break
            chosen.append(s)
            taken += sizes[s]
        return chosen
    return _by_class(meta, seed, choose)


def pole_folds(meta: pd.DataFrame, folds: int, fold: int, seed: int) -> pd.Series:
    """Subset per image: fold `fold` of `folds` is validation. Each class's signs go, in a seeded order,
    to the fold with the fewest of its images so far, so over the folds every Training sign is validated
    once: rare classes too, which one carved validation set may miss. A class keeps a sign in train in
    every fold: its second sign goes to another fold than its first (a class of one sign stays in train)."""
    def choose(class_id, order, sizes):
        if len(sizes) < 2:
            return []
        loads, chosen = np.zeros(folds), []
        for s in order:
            k = min(range(folds), key=lambda j: (loads[j], (j - class_id) % folds))  # ties rotate by class
            loads[k] += sizes[s]
            if k == fold:
                chosen.append(s)
        return chosen
    return _by_class(meta, seed, choose)


def notebook(meta: pd.DataFrame) -> tuple[pd.Series, dict]:
    """The notebook's split over Testing's rows, duplicates included; see the module docstring."""
    subset = pd.Series("train", index=meta.index)
    test = meta[meta["split"] == "Testing"]
    row_ids = test["row_ids"].astype(str).str.split()
    n_rows = int(row_ids.map(len).sum())
    order = np.arange(n_rows)
    np.random.RandomState(NOTEBOOK_SEED).shuffle(order)  # = np.random.seed(42); np.random.shuffle
    n_valid = int(np.floor(NOTEBOOK_VALID_SHARE * n_rows))
    valid_rows = set(order[:n_valid].tolist())
    sides = row_ids.map(lambda ids: {int(i) in valid_rows for i in ids})
    subset[test.index] = np.where(sides.map(lambda s: True in s), "valid", "test")
    both = int(sides.map(len).eq(2).sum())
    info = {"rows": n_rows, "valid_rows": n_valid, "test_rows": n_rows - n_valid,
            "images_with_rows_on_both_sides": both}
    return subset, info


def check_no_leak(meta: pd.DataFrame, subset: pd.Series, strict: bool = True) -> dict:
    """Count signs on two sides; raise (if `strict`) for any beyond those the official sets share."""
    signs = sign_ids(meta)
    sides = {s: set(signs[subset == s]) for s in SUBSETS}
    official = set(official_shared_signs(meta))
    report = {}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = sides[a] & sides[b]
        added = sorted(shared - official)
        report[f"{a}_{b}"] = len(shared)
        if added and strict:
            raise DataError(f"split: {len(added)} physical sign(s) (class/group) on both {a} and {b} "
                            f"beyond the official sets' own: {added[:10]}")
    return report


def carve_test(meta: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """A data set with no Testing side gets one: whole signs per class, as validation is carved."""
    if (meta["split"] == "Testing").any():
        return meta, {}
    chosen = pole_grouped(meta, test_fraction, seed) == "valid"
    meta = meta.assign(split=np.where(chosen, "Testing", meta["split"]))
    return meta, {"test_carved": {"fraction": test_fraction, "images": int(chosen.sum())}}


def make_split(meta: pd.DataFrame, strategy: str, valid_fraction: float, seed: int, folds: int = 0,
               fold: int = 0, test_fraction: float = 0.2) -> tuple[pd.DataFrame, dict]:
    """The split table (metadata + `subset`) and its report."""
    meta, carved = carve_test(meta, test_fraction, seed)
    extra = {}
    if strategy == "notebook":
        subset, info = notebook(meta)
        extra = {"notebook": info}
    elif folds:
        subset, extra = pole_folds(meta, folds, fold, seed), {"cross_validation": {"folds": folds, "fold": fold}}
    else:
        subset = pole_grouped(meta, valid_fraction, seed)
    # The notebook's split leaks by design (views of one sign on both sides): reported, not refused.
    leaks = check_no_leak(meta, subset, strict=strategy != "notebook")
    out = meta.assign(subset=subset.to_numpy())
    counts = out["subset"].value_counts()
    for side, key, fraction in (("test", "split.test_fraction", test_fraction),
                                ("valid", "split.valid_fraction", valid_fraction)):
        if not counts.get(side, 0):  # too few signs to carve from: say so here, not as a crash in training
            raise DataError(f"split: the {side} set is empty: {len(meta)} images in {sign_ids(meta).nunique()} "
                            f"physical signs (groups) over {meta['class_id'].nunique()} classes, and each class "
                            f"gives {side} only whole signs, never its last one, about {key} = {fraction} of its "
                            f"images; add images (more signs per class) or raise {key}")
    report = {
        "strategy": strategy,
        "images": {s: int(counts.get(s, 0)) for s in SUBSETS},
        "classes": {s: int(out.loc[out["subset"] == s, "class_id"].nunique()) for s in SUBSETS},
        "official_shared_signs": official_shared_signs(meta),
        "shared_signs": leaks,
        **carved,
        **extra,
    }
    return out, report


def class_frequencies(split: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Images per class id and subset (long format, every class listed): the data behind the bar charts."""
    counts = split.groupby(["subset", "class_id"]).size()
    rows = [{"subset": s, "class_id": c, "count": int(counts.get((s, c), 0))}
            for s in SUBSETS for c in range(num_classes)]
    return pd.DataFrame(rows)
