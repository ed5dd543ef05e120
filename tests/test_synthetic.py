"""The synthetic default: official layout and GT convention, determinism, classes, poles."""
from __future__ import annotations

import hashlib

import pytest

from tsloc.data.belgiumtsc import read_dataset
from tsloc.data.split import official_shared_signs
from tsloc.data.synthetic import NUM_CLASSES, class_counts, class_look, generate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(root, size=400, seed=3)
    return root


def _tree_digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_convention(synthetic):
    assert (synthetic / "Training" / "00000" / "GT-00000.csv").read_text().startswith(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    for split in ("Training", "Testing"):
        assert sorted(p.name for p in (synthetic / split).iterdir()) == [f"{c:05d}" for c in range(NUM_CLASSES)]
    # The one reader accepts it, which checks every swapped size against the PPM header and every box.
    df, summary = read_dataset(synthetic)
    assert summary["Training"]["classes"] == NUM_CLASSES
    assert summary["Training"]["duplicate_rows_dropped"] == 2
    assert summary["Testing"]["classes"] == sum(1 for n in class_counts(400)[1] if n)
    assert ((df.width > df.height).any() and (df.width < df.height).any())
    assert df.width.min() >= 20 and df.width.max() <= 420
    margin = (df.left / (df.right - df.left))
    assert 0.03 < margin.median() < 0.2  # about 10% margin, with jitter


def test_deterministic(synthetic, tmp_path):
    generate(tmp_path / "again", size=400, seed=3)
    assert _tree_digest(tmp_path / "again") == _tree_digest(synthetic)
    generate(tmp_path / "other", size=400, seed=4)
    assert _tree_digest(tmp_path / "other") != _tree_digest(synthetic)


def test_poles_and_shared_signs(synthetic):
    df, _ = read_dataset(synthetic)
    views = df.groupby(["split", "class_id", "group"]).size()
    assert 2 <= views.median() <= 4
    assert len(official_shared_signs(df)) >= 1  # some signs seen in both sets, as in the real data


def test_classes_look_different():
    looks = {(shape, scheme, glyph) for shape, scheme, glyph in map(class_look, range(NUM_CLASSES))}
    assert len(looks) == NUM_CLASSES


def test_long_tail_counts():
    train, test = class_counts(7095)
    assert max(train) / min(train) > 20 and sum(train) == pytest.approx(4575, rel=0.02)
    assert sum(1 for n in test if n == 0) == 9
