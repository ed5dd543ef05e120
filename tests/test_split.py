"""Splits: grouped by physical sign, stratified by class, the notebook's replay, the leak check."""
from __future__ import annotations

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
                    rows.append({"split": split, "class_id": c, "pole": pole})
    df = pd.DataFrame(rows)
    df["row_ids"] = [str(i) for i in range(len(df))]
    # One sign shared by the official sets, as the real data has six.
    shared = df[(df.split == "Testing") & (df.class_id == 0)].pole.iloc[0]
    df.loc[(df.split == "Training") & (df.class_id == 0) & (df.pole == df.pole.min()), "pole"] = shared
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
    first = meta[(meta.split == "Training") & (meta.class_id == 1)].pole.iloc[0]
    rows = meta[(meta.pole == first)].index
    subset[rows[:1]] = "valid"
    if len(rows) == 1:  # make sure the sign really has a view on each side
        pytest.skip("sign with one view")
    with pytest.raises(DataError, match="on both train and valid"):
        check_no_leak(meta, subset)
