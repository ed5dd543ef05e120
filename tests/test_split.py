"""Splits: grouped by physical sign, stratified by class, the notebook's replay, the leak check."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tsloc.data.split import check_no_leak, make_split, notebook, pole_grouped, sign_ids
from tsloc.errors import DataError


def _meta(seed=0, classes=6, signs_per_class=10, views=3, test_signs=4):
    rng = np.random.default_rng(seed)
    rows, pole = [], 100
    for split, n_signs in (("Training", signs_per_class), ("Testing", test_signs)):
        for c in range(classes):
            for _ in range(n_signs):
                pole += 1
                for _ in range(int(rng.integers(1, views + 1))):
                    rows.append({"split": split, "class_id": c, "group": pole})
    df = pd.DataFrame(rows)
    df["row_ids"] = [str(i) for i in range(len(df))]
    # One sign shared by the official sets, as the real data has six.
    shared = df[(df.split == "Testing") & (df.class_id == 0)].group.iloc[0]
    df.loc[(df.split == "Training") & (df.class_id == 0) & (df.group == df.group.min()), "group"] = shared
    return df


def test_pole_grouped_no_sign_on_two_sides_and_stratified():
    meta = _meta()
    table, report = make_split(meta, "pole-grouped", 0.25, seed=1)
    signs = sign_ids(table)
    sides = {s: set(signs[table.subset == s]) for s in ("train", "valid", "test")}
    assert not sides["train"] & sides["valid"] and not sides["valid"] & sides["test"]
    assert report["shared_signs"] == {"train_valid": 0, "train_test": 1, "valid_test": 0}
    assert report["official_shared_signs"] == sorted(set(sides["train"]) & set(sides["test"]))
    assert (table[table.split == "Testing"].subset == "test").all()
    train = table[table.split == "Training"]
    share = train.groupby("class_id").subset.apply(lambda s: (s == "valid").mean())
    assert share.between(0.1, 0.4).all()  # every class gives about a quarter to validation
    assert set(train[train.subset == "train"].class_id) == set(range(6))


def test_pole_grouped_keeps_last_sign_of_a_class_in_train():
    meta = _meta(classes=2, signs_per_class=1)
    subset = pole_grouped(meta, 0.5, seed=0)
    assert (subset[meta.split == "Training"] == "train").all()


def test_seed_changes_valid():
    meta = _meta()
    assert not pole_grouped(meta, 0.25, 1).equals(pole_grouped(meta, 0.25, 2))
    assert pole_grouped(meta, 0.25, 1).equals(pole_grouped(meta, 0.25, 1))


def test_notebook_split_replays_the_notebook():
    meta = _meta()
    test = meta[meta.split == "Testing"].copy()
    # Give two images duplicate rows, as the real Testing set has; row ids count rows.
    ids, i = [], 0
    for k in range(len(test)):
        n = 2 if k in (3, 10) else 1
        ids.append(" ".join(str(i + j) for j in range(n)))
        i += n
    meta.loc[test.index, "row_ids"] = ids
    subset, info = notebook(meta)
    # The notebook: np.random.seed(42); shuffle(indices); split = floor(0.57 * num); valid = indices[:split].
    np.random.seed(42)
    indices = list(range(i))
    np.random.shuffle(indices)
    valid_rows = set(indices[:int(np.floor(0.57 * i))])
    expected = ["valid" if any(int(r) in valid_rows for r in s.split()) else "test" for s in ids]
    assert subset[test.index].tolist() == expected
    assert (subset[meta.split == "Training"] == "train").all()
    assert info["rows"] == i and info["valid_rows"] == int(np.floor(0.57 * i))


def test_leak_check_refuses_a_split_that_shares_a_sign():
    meta = _meta()
    subset = pd.Series(np.where(meta.split == "Training", "train", "test"), index=meta.index)
    first = meta[(meta.split == "Training") & (meta.class_id == 1)].group.iloc[0]
    rows = meta[(meta.group == first)].index
    subset[rows[:1]] = "valid"
    if len(rows) == 1:  # make sure the sign really has a view on each side
        pytest.skip("sign with one view")
    with pytest.raises(DataError, match="on both train and valid"):
        check_no_leak(meta, subset)


def test_smaller_valid_share_lies_inside_a_larger_one():
    # What `tsloc compare` relies on: runs with different valid_fraction share the smaller validation set.
    meta = _meta(classes=8, signs_per_class=20)
    small = make_split(meta, "pole-grouped", 0.1, seed=3)[0]
    large = make_split(meta, "pole-grouped", 0.3, seed=3)[0]
    in_small, in_large = small.subset == "valid", large.subset == "valid"
    assert 0 < in_small.sum() < in_large.sum() and not (in_small & ~in_large).any()


def test_heldout_rows_refuses_a_run_that_trained_on_the_reference_images():
    from tsloc.pipeline.compare import heldout_rows
    meta = _meta(classes=8, signs_per_class=20)
    meta["path"] = [f"img{i}.ppm" for i in range(len(meta))]
    small = make_split(meta, "pole-grouped", 0.1, seed=3)[0]
    large = make_split(meta, "pole-grouped", 0.3, seed=3)[0]
    assert np.array_equal(heldout_rows(small, large, "large"), np.flatnonzero(small.subset == "valid"))
    with pytest.raises(DataError, match=r"small: trained on \d+ of the reference's \d+ validation images"):
        heldout_rows(large, small, "small")
    with pytest.raises(DataError, match="other images than the reference's"):
        heldout_rows(small, large.iloc[::-1].reset_index(drop=True), "shuffled")


def test_pole_folds_validate_every_sign_once_and_never_a_whole_class():
    meta = _meta(classes=8, signs_per_class=7)
    meta.loc[meta.index[(meta.split == "Training") & (meta.class_id == 5)], "group"] = 999  # a class of one sign
    signs = sign_ids(meta)
    training = meta.split == "Training"
    shared = set(signs[training]) & set(signs[~training])
    seen = pd.Series(0, index=meta.index)
    for fold in range(3):
        table, report = make_split(meta, "pole-grouped", 0.2, seed=1, folds=3, fold=fold)
        valid = table.subset == "valid"
        seen += valid
        assert report["cross_validation"] == {"folds": 3, "fold": fold}
        assert not set(signs[valid]) & set(signs[table.subset == "train"])  # whole signs
        assert table[training].groupby("class_id").subset.apply(lambda s: (s == "train").any()).all()
        assert 0.2 < valid.sum() / training.sum() < 0.45
    cv = training & ~signs.isin(shared) & (meta.class_id != 5)
    assert (seen[cv] == 1).all() and (seen[~cv] == 0).all()  # each sign validated exactly once


def _cv_run(fold, accuracy, images=100, folds=3, weights="sqrt", data="d1"):
    params = {"split": {"folds": folds, "fold": fold, "seed": 42}, "train": {"class_weights": weights}}
    valid = {"images": images, "accuracy": accuracy, "balanced_accuracy": accuracy - 0.01, "mean_iou": 0.9 + fold / 100}
    return {"params": params, "valid": valid, "data": {"fingerprint": data}}


def test_cross_validation_pools_each_configuration_over_its_folds():
    from tsloc.pipeline.compare import cross_validation
    runs = {"s2": _cv_run(2, 0.99, images=200), "s0": _cv_run(0, 0.95), "s1": _cv_run(1, 0.97),
            "i0": _cv_run(0, 0.90, weights="inverse"), "i1": _cv_run(1, 0.90, weights="inverse"),
            "i2": _cv_run(2, 0.90, weights="inverse")}
    table = cross_validation(runs).set_index("train.class_weights")
    assert list(table.columns) == ["runs", "images", "errors", "errors_per_fold", "accuracy",
                                   "balanced_accuracy", "mean_iou"]  # only the differing param is a column
    sqrt = table.loc["sqrt"]
    assert sqrt["runs"] == "s0 s1 s2" and sqrt["errors_per_fold"] == "5/3/2" and sqrt["errors"] == 10
    assert sqrt["images"] == 400 and sqrt["accuracy"] == pytest.approx(0.975)
    assert sqrt["balanced_accuracy"] == pytest.approx((0.94 + 0.96 + 0.98) / 3)
    assert sqrt["mean_iou"] == pytest.approx((0.90 * 100 + 0.91 * 100 + 0.92 * 200) / 400)  # weighted by images
    assert table.loc["inverse", "errors"] == 30


@pytest.mark.parametrize("runs, message", [
    ({"a0": _cv_run(0, 0.9), "a2": _cv_run(2, 0.9)}, "a0, a2: one configuration needs each of folds 0 to 2 once; "
                                                     "fold 1 missing"),
    ({"a0": _cv_run(0, 0.9), "b0": _cv_run(0, 0.8), "a1": _cv_run(1, 0.9), "a2": _cv_run(2, 0.9)},
     "fold 0 given twice"),
    ({"a0": _cv_run(0, 0.9), "x": _cv_run(0, 0.9, folds=0)}, "x: not a cross-validation run (split.folds is 0"),
    ({"a0": _cv_run(0, 0.9), "a1": _cv_run(1, 0.9, data="d2")}, "a1: read other data than a0"),
])
def test_cross_validation_refuses_incomplete_or_mixed_runs(runs, message):
    from tsloc.pipeline.compare import cross_validation
    with pytest.raises(DataError, match=re.escape(message)):
        cross_validation(runs)
