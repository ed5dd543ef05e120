"""Data set formats: detection, the GTSRB and manifest readers, their bad input, the synthetic twins."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import write_ppm
from tsloc.data import formats
from tsloc.data.images import image_size, open_rgb
from tsloc.data.split import make_split, sign_ids
from tsloc.data.store import NpyWriter, build_store, write_store
from tsloc.data.synthetic import PROFILES, generate
from tsloc.errors import DataError

GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2"


def write_gtsrb(root: Path, labels_at: str = "beside") -> Path:
    """A tiny GTSRB: classes 0 and 2 (wide images, so a swapped reading would fail), two tracks each;
    test labels beside GTSRB/ or next to the test images."""
    train = root / "GTSRB" / "Final_Training" / "Images"
    for c in (0, 1, 2):
        folder = train / f"{c:05d}"
        folder.mkdir(parents=True)
        lines = [GT_HEADER + ";ClassId"]
        for track in (range(2) if c != 1 else ()):
            for view in range(2):
                name = f"{track:05d}_{view:05d}.ppm"
                write_ppm(folder / name, 40, 30, seed=view)
                lines.append(f"{name};40;30;5;5;35;25;{c}")  # x along the width: 35 <= 40, 25 <= 30
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(lines) + "\n")
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for i, c in enumerate((0, 2, 2)):
        write_ppm(test / f"{i:05d}.ppm", 36, 20, seed=i)
        rows.append(f"{i:05d}.ppm;36;20;5;5;31;15")
    (test / "GT-final_test.test.csv").write_text("\n".join([GT_HEADER] + rows) + "\n")
    labels = root if labels_at == "beside" else test
    (labels / "GT-final_test.csv").write_text(
        "\n".join([GT_HEADER + ";ClassId"] + [f"{r};{c}" for r, c in zip(rows, (0, 2, 2))]) + "\n")
    return root


def test_gtsrb_training_set_alone_gets_a_test_set_carved_by_track(tmp_path):
    """The training archive without Final_Test (as ../shared/data/gtsrb holds it): every image is
    Training, and the split carves the test side from it, whole tracks at a time."""
    import shutil
    from tsloc.data.split import carve_test
    root = write_gtsrb(tmp_path / "g")
    shutil.rmtree(root / "GTSRB" / "Final_Test")
    (root / "GT-final_test.csv").unlink()
    t = formats.read("auto", root).table
    assert len(t) == 8 and (t.split == "Training").all()
    carved, report = carve_test(t, 0.5, seed=0)
    test = carved[carved.split == "Testing"]
    assert report["test_carved"]["images"] == len(test) > 0
    tracks = lambda part: set(zip(part.class_id, part.group))  # noqa: E731
    assert not tracks(test) & tracks(carved[carved.split == "Training"])  # no track on both sides


def test_gtsrb_reads_the_official_layout(tmp_path):
    data = formats.read("auto", write_gtsrb(tmp_path / "g"))
    t = data.table
    assert data.format == "gtsrb" and len(data.names) == 43 and data.names[14] == "Stop"
    assert data.names[42] == "End of no passing by vehicles over 3.5 t"
    assert (t.split == "Training").sum() == 8 and (t.split == "Testing").sum() == 3
    train = t[t.split == "Training"]
    assert set(train.group.astype(int)) == {0, 1}  # the track
    assert (train[["left", "top", "right", "bottom"]].to_numpy() == [5, 5, 35, 25]).all()  # not swapped
    assert (train.width == 40).all() and (train.height == 30).all()
    test = t[t.split == "Testing"]
    assert test.class_id.tolist() == [0, 2, 2] and test.group.nunique() == 3  # no track: each its own sign
    assert data.summary["Training"] == {"images": 8, "classes": 2} and data.fingerprint["Testing"]["files"] == 4


@pytest.mark.parametrize("where", ["top", "one level down", "the GTSRB folder", "labels beside the images"])
def test_gtsrb_accepted_layouts(tmp_path, where):
    root = write_gtsrb(tmp_path / "g", labels_at="images" if where == "labels beside the images" else "beside")
    given = {"top": root, "one level down": tmp_path, "the GTSRB folder": root / "GTSRB",
             "labels beside the images": root}[where]
    assert formats.detect(given) == "gtsrb"
    assert (formats.read("gtsrb", given).table.split == "Testing").sum() == 3


def test_gtsrb_from_its_three_zips(tmp_path):
    """A folder holding the three official archives: ingest extracts them and reads GTSRB."""
    from tsloc.data.ingest import _stage_images
    root = write_gtsrb(tmp_path / "g")
    zips = tmp_path / "zips"
    zips.mkdir()
    for name, top, members in (("GTSRB_Final_Training_Images.zip", root, root.glob("GTSRB/Final_Training/**/*")),
                               ("GTSRB_Final_Test_Images.zip", root, root.glob("GTSRB/Final_Test/**/*")),
                               ("GTSRB_Final_Test_GT.zip", root, [root / "GT-final_test.csv"])):
        with zipfile.ZipFile(zips / name, "w") as z:
            for m in members:
                if m.is_file():
                    z.write(m, m.relative_to(top).as_posix())
    out = tmp_path / "raw"
    out.mkdir()
    data = SimpleNamespace(source="local", path=str(zips), format="auto")
    where, info = _stage_images(data, out)
    assert where == out and len(info["archives"]) == 3
    assert formats.read("auto", where).table.shape[0] == 11


def test_gtsrb_test_set_without_labels_is_refused(tmp_path):
    root = write_gtsrb(tmp_path / "g")
    (root / "GT-final_test.csv").unlink()
    with pytest.raises(DataError, match=r"the test set has no labels: GT-final_test\.csv .*not found"):
        formats.read("auto", root)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("00001_00001.ppm;40;30;5;5;35;25", "00001_00001.ppm;40;30;5;5;45;25"),
     r"GT-00000\.csv, line 5: box \(left 5, top 5, right 45, bottom 25\) is not inside its 40x30 image"),
    (lambda s: s.replace("00000_00001.ppm;40;30", "00000_00001.ppm;30;40"),
     r"GT-00000\.csv, line 3: Width=30;Height=40 disagree with the image \(40 px wide, 30 px tall\)"),
    (lambda s: s.replace("00001_00000.ppm", "00009_00000.ppm"), r"GT-00000\.csv, line 4: image .*00009_00000\.ppm not found"),
    (lambda s: s.replace("5;5;35;25;0\n", "5;5;35;x;0\n", 1), r"GT-00000\.csv, line 2: Roi\.Y2 is 'x'"),
])
def test_gtsrb_bad_input_names_file_and_line(tmp_path, edit, message):
    root = write_gtsrb(tmp_path / "g")
    csv = root / "GTSRB" / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    csv.write_text(edit(csv.read_text()))
    with pytest.raises(DataError, match=message):
        formats.read("gtsrb", root)


def test_unseen_test_class_is_refused_with_its_name_and_file(tmp_path):
    root = write_gtsrb(tmp_path / "g")
    labels = root / "GT-final_test.csv"
    labels.write_text(labels.read_text().replace("00002.ppm;36;20;5;5;31;15;2", "00002.ppm;36;20;5;5;31;15;14"))
    with pytest.raises(DataError, match=r"00002\.ppm: class 14 \(Stop\) is in the test set but has no training image"):
        formats.read("gtsrb", root)


def test_nothing_recognised_says_what_it_looked_for(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError) as err:
        formats.detect(tmp_path / "photos")
    text = str(err.value)
    for looked in ("Training/ and Testing/", "GTSRB/Final_Training/Images/", "manifest.csv", "GTSRB_Final_*.zip"):
        assert looked in text


# --- manifests ---------------------------------------------------------------------------------------

def _photo(path: Path, size=(60, 40), colour=(200, 30, 30), exif_orientation: int | None = None) -> None:
    """An image whose upright form is `size`; with an EXIF orientation of 6 the pixels are stored turned."""
    img = Image.new("RGB", size, (90, 90, 90))
    img.paste(colour, (10, 10, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    else:
        img.save(path)


def _hand_manifest(root: Path, rows: list[str], classes: str | None = None, header="path,label,left,top,right,bottom") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text("\n".join([header] + rows) + "\n")
    if classes is not None:
        (root / "classes.csv").write_text(classes)
    return root


def test_manifest_jpeg_png_and_exif(tmp_path):
    root = tmp_path / "m"
    _photo(root / "a.png")
    _photo(root / "b.jpg")
    _photo(root / "turned.jpg", exif_orientation=6)  # upright 60 x 40; stored 40 x 60
    assert Image.open(root / "turned.jpg").size == (40, 60) and image_size(root / "turned.jpg") == (60, 40)
    upright = np.asarray(open_rgb(root / "turned.jpg"))
    assert upright.shape == (40, 60, 3) and upright[20, 20, 0] > 150  # the red patch is where the box says
    _hand_manifest(root, ["a.png,stop,10,10,30,30", "b.jpg,yield,10,10,30,30", "turned.jpg,stop,10,10,58,30"])
    data = formats.read("auto", root)
    assert data.format == "manifest" and data.names == ["stop", "yield"]  # names sorted: ids 0, 1
    t = data.table
    assert t.class_id.tolist() == [0, 1, 0] and (t.split == "Training").all()
    assert t.loc[2, ["width", "height"]].tolist() == [60, 40]
    assert t.group.nunique() == 3  # no group column: every image its own sign


def test_manifest_box_is_checked_against_the_upright_image(tmp_path):
    root = tmp_path / "m"
    _photo(root / "turned.jpg", exif_orientation=6)
    _hand_manifest(root, ["turned.jpg,stop,10,10,30,50"])  # fits the stored 40 x 60, not the upright 60 x 40
    with pytest.raises(DataError, match=r"manifest\.csv, line 2: box .* is not inside its 60x40 image"):
        formats.read("manifest", root)


def test_manifest_labels_ids_classes_csv_subset_and_group(tmp_path):
    root = tmp_path / "m"
    for name in ("a.png", "b.png", "c.png"):
        _photo(root / name)
    _hand_manifest(root, ["a.png,1,10,10,30,30,train,pole-7", "b.png,Stop,10,10,30,30,train,pole-7",
                          "c.png,0,10,10,30,30,test,"],
                   classes="class_id,name\n0,Stop\n1,Yield\n", header="path,label,left,top,right,bottom,subset,group")
    data = formats.read("manifest", root / "manifest.csv")
    t = data.table
    assert data.names == ["Stop", "Yield"] and t.class_id.tolist() == [1, 0, 0]
    assert t.split.tolist() == ["Training", "Training", "Testing"]
    assert t.group.tolist()[:2] == ["pole-7", "pole-7"] and t.group[2] != "pole-7"


def test_manifest_integer_labels_are_ids(tmp_path):
    root = tmp_path / "m"
    _photo(root / "a.png")
    _hand_manifest(root, ["a.png,2,10,10,30,30", "a.png,2,10,10,30,30"])  # an exact duplicate row: dropped
    data = formats.read("manifest", root)
    assert data.names == ["class 0", "class 1", "class 2"] and data.table.class_id.tolist() == [2]
    assert data.summary["Training"]["duplicate_rows_dropped"] == 1


@pytest.mark.parametrize("rows, classes, message", [
    (["a.png,Stop,10,10,30,30", "nothere.png,Stop,1,1,5,5"], None, r"manifest\.csv, line 3: image .*nothere\.png not found"),
    (["a.png,Stop,10,10,30,x"], None, r"manifest\.csv, line 2: bottom is 'x', not a number"),
    (["a.png,Stop,10,10,70,30"], None, r"manifest\.csv, line 2: box \(left 10, top 10, right 70, bottom 30\) "
                                       r"is not inside its 60x40 image"),
    (["a.png,Stop,10,10,30,30", "a.png,Stop,1,1,5,5"], None, r"line 3: a\.png is listed again with other values "
                                                             r"\(several boxes in one image need data\.crop_margin"),
    (["a.png,Zebra,10,10,30,30"], "class_id,name\n0,Stop\n", r"manifest\.csv, line 2: label 'Zebra' is neither a "
                                                            r"class id nor a class name in .*classes\.csv"),
    (["broken.png,Stop,1,1,5,5"], None, r"broken\.png: unreadable image"),
])
def test_manifest_bad_input_names_file_and_row(tmp_path, rows, classes, message):
    root = tmp_path / "m"
    _photo(root / "a.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _hand_manifest(root, rows, classes)
    with pytest.raises(DataError, match=message):
        formats.read("manifest", root)


def test_manifest_missing_column(tmp_path):
    root = _hand_manifest(tmp_path / "m", ["a.png,Stop,1,1,5"], header="path,label,left,top,right")
    with pytest.raises(DataError, match=r"manifest\.csv: missing column\(s\) \['bottom'\]"):
        formats.read("manifest", root)


def test_crop_margin_cuts_each_box_out_of_its_frame(tmp_path):
    root = tmp_path / "m"
    frame = Image.new("RGB", (200, 100), (50, 50, 50))
    frame.paste((255, 0, 0), (20, 20, 60, 60))     # sign 1: 40 x 40
    frame.paste((0, 0, 255), (150, 30, 190, 90))   # sign 2: 40 x 60, near the right edge
    root.mkdir()
    frame.save(root / "frame.png")
    _hand_manifest(root, ["frame.png,red,20,20,60,60", "frame.png,blue,150,30,190,90"])
    crops = tmp_path / "crops"
    data = formats.read("manifest", root, crop_margin=0.25, crops=crops)
    t = data.table
    assert len(t) == 2 and t.group.nunique() == 1  # two crops of one frame: one group
    first, second = t.iloc[0], t.iloc[1]
    assert (first.width, first.height) == (60, 60)  # 40 + 2 x 10
    assert [first.left, first.top, first.right, first.bottom] == [10, 10, 50, 50]
    assert (second.width, second.height) == (200 - 140, 100 - 15)  # clipped by the frame's right and bottom
    assert [second.left, second.top] == [10, 15]
    crop = np.asarray(Image.open(first.path))
    assert crop.shape == (60, 60, 3) and tuple(crop[30, 30]) == (255, 0, 0) and tuple(crop[5, 5]) == (50, 50, 50)
    assert Path(second.path).parent == crops


def test_crop_margin_refused_for_formats_of_crops(tmp_path):
    with pytest.raises(DataError, match="data.crop_margin applies to whole frames"):
        formats.read("gtsrb", write_gtsrb(tmp_path / "g"), crop_margin=0.2)


# --- split, store, synthetic twins ----------------------------------------------------------------------

def test_split_carves_a_test_set_by_whole_groups_when_there_is_none(tmp_path):
    generate(tmp_path / "m", size=400, seed=1, fmt="manifest")
    data = formats.read("auto", tmp_path / "m")
    assert (data.table.split == "Training").all()
    table, report = make_split(data.table, "pole-grouped", 0.2, seed=42, test_fraction=0.25)
    counts = table.subset.value_counts()
    assert report["test_carved"]["images"] == counts["test"] and 0.15 < counts["test"] / len(table) < 0.35
    signs = sign_ids(table)
    sides = [set(signs[table.subset == s]) for s in ("train", "valid", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert set(table[table.subset == "test"].class_id) <= set(table[table.subset == "train"].class_id)


@pytest.mark.parametrize("fmt, classes", [("belgiumtsc", 62), ("gtsrb", 43), ("manifest", 20)])
def test_synthetic_twin_of_each_format_is_read_by_its_reader(tmp_path, fmt, classes):
    generate(tmp_path / fmt, size=300, seed=2, fmt=fmt)
    assert formats.detect(tmp_path / fmt) == fmt
    data = formats.read("auto", tmp_path / fmt)
    assert len(data.names) == classes == len(PROFILES[fmt][0])
    assert data.table.class_id.nunique() == classes
    if fmt == "manifest":
        assert data.names[0] == "circle white-red dot" and (data.table.filename.str.endswith(".jpg")).sum() >= 10
    if fmt == "gtsrb":
        assert data.names[0] == "Speed limit (20km/h)" and (data.table.split == "Testing").sum() > 0


def test_store_written_to_disk_equals_the_one_in_memory(tmp_path):
    generate(tmp_path / "m", size=150, seed=0, fmt="manifest")
    meta = formats.read("manifest", tmp_path / "m").table
    in_memory = build_store(meta, 32)
    chunks = []
    shape = write_store(meta, 32, tmp_path / "images.npy", on_chunk=chunks.append, threads=3, chunk=7)
    assert shape == in_memory.shape and [len(c) for c in chunks[:2]] == [7, 7]
    assert np.array_equal(np.load(tmp_path / "images.npy", mmap_mode="r"), in_memory)
    with open(tmp_path / "saved.npy", "wb") as f:
        np.save(f, in_memory)
    assert (tmp_path / "saved.npy").read_bytes() == (tmp_path / "images.npy").read_bytes()  # np.save's bytes
    jpg = meta.index[meta.filename.str.endswith(".jpg")][0]  # stored sideways; the store holds it upright
    upright = np.asarray(open_rgb(meta.path[jpg]).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(in_memory[jpg], upright)


@pytest.mark.parametrize("params, cached", [("model: {weights: none}", True),  # the notebook's: trains on them
                                            ("model: {weights: none, finetune_blocks: 2}", False),  # reads the images
                                            ("model: {weights: none}\ntrain: {augment: {enabled: true}}", False)])
def test_the_features_stage_runs_the_backbone_only_for_a_recipe_that_reads_its_features(tmp_path, monkeypatch,
                                                                                        params, cached):
    """The frozen backbone's pass over every image is most of the stage: a fine-tuning or augmenting
    recipe never reads its pooled features, so pooled.npy has no rows there; the store is whole either way."""
    from tsloc.pipeline import features
    generate(tmp_path / "m", size=40, seed=0, fmt="manifest")
    meta = formats.read("manifest", tmp_path / "m").table
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    meta.to_csv("data/metadata.csv", index=False)
    Path("params.yaml").write_text(f"data: {{image_size: 32}}\n{params}\n")
    rows = len(meta) if cached else 0
    assert features.run("params.yaml")["features"] == [rows, 1280]
    assert np.load("data/features/pooled.npy").shape == (rows, 1280)
    assert np.array_equal(np.load("data/features/images.npy"), build_store(meta, 32))


def test_synthetic_twin_needs_two_images_per_class(tmp_path):
    with pytest.raises(DataError, match=r"data\.synthetic\.size must be at least 86 for the gtsrb twin"):
        generate(tmp_path / "g", size=80, fmt="gtsrb")


@pytest.mark.slow  # a process each (the command's start-up is most of it)
@pytest.mark.parametrize("fmt", ["gtsrb", "manifest", "nothing"])
def test_cli_ingest_of_each_format_bad_input_exits_2_and_writes_nothing(tmp_path, fmt):
    """Through the command, as DVC runs it: one line naming the file, exit 2, no output, no leftovers."""
    import os
    import subprocess
    import sys
    if fmt == "gtsrb":
        data = write_gtsrb(tmp_path / "g")
        (data / "GTSRB" / "Final_Test" / "Images" / "00001.ppm").unlink()
        expected = r"GT-final_test\.csv, line 3: image .*00001\.ppm not found"
    elif fmt == "manifest":
        data = tmp_path / "m"
        _photo(data / "a.png")
        _hand_manifest(data, ["a.png,stop,10,10,30,30", "a.png,stop,10,10"])
        expected = r"manifest\.csv, line 3: right is '', not a number"
    else:
        data = tmp_path / "photos"
        _photo(data / "a.png")
        expected = r"photos: no data set format recognised \(looked for BelgiumTSC"
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(f"data: {{source: local, path: {data}}}\n")
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "ingest"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]  # progress bars aside
    assert len(errors) == 1 and errors[0].startswith("tsloc ingest: error:") and re.search(expected, errors[0]), errors
    assert os.listdir(work / "data") == [] and not (work / "metrics").exists()


@pytest.mark.slow
def test_cli_ingest_manifest_with_crops_writes_them_under_data_raw(tmp_path):
    import json
    import subprocess
    import sys
    data = tmp_path / "frames"
    data.mkdir()
    frame = Image.new("RGB", (120, 80), (40, 40, 40))
    frame.paste((250, 250, 250), (10, 10, 50, 50))
    frame.paste((250, 0, 0), (70, 20, 110, 60))
    frame.save(data / "f.jpg")
    _hand_manifest(data, ["f.jpg,white,10,10,50,50,train", "f.jpg,red,70,20,110,60,train",
                          "f.jpg,white,10,10,50,50,test"], header="path,label,left,top,right,bottom,subset")
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(f"data: {{source: local, path: {data}, crop_margin: 0.1}}\n")
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "ingest"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    meta = pd.read_csv(work / "data" / "metadata.csv")
    assert meta.path.str.startswith("data/raw/crops/").all() and len(meta) == 3
    assert all((work / p).is_file() for p in meta.path)
    assert pd.read_csv(work / "data" / "classes.csv").name.tolist() == ["red", "white"]
    assert json.loads((work / "reports" / "ingest.json").read_text())["format"] == "manifest"


def test_npy_writer_refuses_a_short_or_misshapen_array(tmp_path):
    with pytest.raises(ValueError, match="rows of shape"):
        with NpyWriter(tmp_path / "a.npy", (4, 3), np.float32) as out:
            out.write(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2 rows written of 4"):
        with NpyWriter(tmp_path / "b.npy", (4, 3), np.float32) as out:
            out.write(np.zeros((2, 3)))


def test_too_few_signs_to_carve_valid_and_test_is_refused_clearly():
    """Two images per class (the README's five-line manifest): no sign can go to test or valid."""
    meta = pd.DataFrame({"split": "Training", "class_id": [0, 0, 1, 1], "group": ["a", "b", "c", "d"],
                         "path": list("wxyz")})
    with pytest.raises(DataError, match=r"split: the test set is empty: 4 images in 4 physical signs \(groups\) "
                                        r"over 2 classes.*raise split\.test_fraction"):
        make_split(meta, "pole-grouped", 0.2, seed=0, test_fraction=0.2)
