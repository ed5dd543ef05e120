"""The scene branch's data: the GTSDB reader, the manifest of frames, the synthetic street scenes,
the split by frame, GTSDB's signs as crops for the namer, and bad input through the stage."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, write_ppm
from tsloc.data import formats, gtsdb
from tsloc.data.frames import NO_SIGN
from tsloc.errors import DataError
from tsloc.scenes import manifest, synthetic
from tsloc.scenes.split import signs_manifest, split_frames

README = "\n".join(["Some text", "0 = speed limit 20 (prohibitory)"]
                   + [f"{i} = class {i} ({('danger', 'mandatory', 'other', 'prohibitory')[i % 4]})" for i in range(1, 43)])


def write_gtsdb(root: Path, lines: list[str], frames=(0, 1, 2), size=(80, 50), readme: bool = True) -> Path:
    """A small GTSDB package: frames NNNNN.ppm of `size`, gt.txt with `lines`, ReadMe.txt."""
    folder = root / "FullIJCNN2013"
    for i in frames:
        write_ppm(folder / f"{i:05d}.ppm", *size, seed=i)
    (folder / "gt.txt").write_text("".join(line + "\n" for line in lines))
    if readme:
        (folder / "ReadMe.txt").write_text(README)
    return root


def test_gtsdb_inclusive_edges_empty_frames_and_categories(tmp_path):
    root = write_gtsdb(tmp_path, ["00000.ppm;10;5;29;24;14", "00000.ppm;40;10;59;30;1", "00002.ppm;0;0;79;49;42"])
    data = gtsdb.read_frames(root)
    t = data.table
    signs = t[t["class_id"] != NO_SIGN]
    assert signs[["left", "top", "right", "bottom"]].values.tolist() == [[10, 5, 30, 25], [40, 10, 60, 31], [0, 0, 80, 50]]
    assert t.loc[t["class_id"] == NO_SIGN, "frame"].map(lambda p: Path(p).name).tolist() == ["00001.ppm"]
    assert (t["side"] == "Training").all() and (t[["width", "height"]] == [80, 50]).all().all()
    assert data.classes.loc[14, "name"] == "Stop" and data.classes.loc[0, "category"] == "prohibitory"
    assert data.classes.loc[1, "category"] == "mandatory"  # from this ReadMe.txt, not the shipped list
    assert data.summary["Training"] == {"frames": 3, "with_signs": 2, "without_signs": 1, "boxes": 3, "classes": 3,
                                        "box_side_px": [20.0, 50.0]}
    shipped = gtsdb.read_frames(write_gtsdb(tmp_path / "plain", ["00000.ppm;1;1;9;9;14"], frames=(0,), readme=False))
    assert shipped.classes.loc[1, "category"] == "prohibitory"  # GTSDB's own list, shipped with the project


def test_the_whole_package_keeps_its_test_frames(tmp_path):
    root = write_gtsdb(tmp_path, ["00001.ppm;1;1;9;9;3", "00600.ppm;2;2;12;12;3"], frames=(0, 1, 600, 601))
    t = gtsdb.read_frames(root).table
    assert t.groupby("side")["frame"].nunique().to_dict() == {"Testing": 2, "Training": 2}
    table, report = split_frames(t, 0.5, 0.2, seed=0)
    assert set(table.loc[table["side"] == "Testing", "subset"]) == {"test"} and report["test_side"] == "the data set's own"


@pytest.mark.parametrize("line, message", [
    ("00000.ppm;10;5;29;24", "gt.txt, line 2: expected 6 fields"),
    ("00000.ppm;10;5;29;x;1", "gt.txt, line 2: box and class must be non-negative integers"),
    ("00000.ppm;10;5;29;24;43", "gt.txt, line 2: class 43 is not one of GTSDB's 0-42"),
    ("00000.ppm;70;5;80;24;1", "gt.txt, line 2: box (left 70, top 5, right 81, bottom 25) is not inside its 80x50 frame"),
    ("00007.ppm;1;1;5;5;1", "gt.txt, line 2: frame"),
    ("frame.ppm;1;1;5;5;1", "gt.txt, line 2: 'frame.ppm' is not a frame name"),
])
def test_bad_gtsdb_lines_are_one_message_through_the_stage_and_nothing_is_written(tmp_path, line, message):
    write_gtsdb(tmp_path / "pkg", ["00001.ppm;1;1;9;9;3", line])
    (tmp_path / "params.yaml").write_text(f"scenes: {{source: local, path: {tmp_path / 'pkg'}}}\n")
    proc = run_cli("scenes_ingest", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = [line.split("\r")[-1].strip() for line in proc.stderr.strip().split("\n")]  # progress bars end in \r
    assert len(lines) == 1 and lines[0].startswith("tsloc scenes_ingest: error: ") and message in lines[0], proc.stderr
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()] and not (tmp_path / "reports").exists()


def test_an_unreadable_frame_is_named(tmp_path):
    root = write_gtsdb(tmp_path, ["00000.ppm;1;1;9;9;3"])
    frame = root / "FullIJCNN2013" / "00002.ppm"
    frame.write_bytes(frame.read_bytes()[:200])
    with pytest.raises(DataError, match="00002.ppm: truncated image"):
        gtsdb.read_frames(root)


def test_the_stage_reads_the_zip_and_writes_the_table(tmp_path):
    src = write_gtsdb(tmp_path / "src", ["00000.ppm;10;5;29;24;14"], frames=(0, 1))
    with zipfile.ZipFile(tmp_path / "FullIJCNN2013.zip", "w") as z:
        for f in sorted((src / "FullIJCNN2013").iterdir()):
            z.write(f, f"FullIJCNN2013/{f.name}")
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(f"scenes: {{source: local, path: {tmp_path / 'FullIJCNN2013.zip'}}}\n")
    proc = run_cli("scenes_ingest", cwd=work)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(work / "data" / "scenes" / "boxes.csv")
    assert table["frame"].tolist() == ["data/scenes/raw/FullIJCNN2013/00000.ppm", "data/scenes/raw/FullIJCNN2013/00001.ppm"]
    assert (work / table["frame"][0]).is_file()
    report = json.loads((work / "reports" / "scenes_ingest.json").read_text())
    assert report["format"] == "gtsdb" and report["source"]["archives"] == ["FullIJCNN2013.zip"]
    assert report["Training"]["frames"] == 2 and report["Training"]["boxes"] == 1
    assert pd.read_csv(work / "data" / "scenes" / "classes.csv").shape == (43, 3)


def write_frames(root: Path, rows: list[str], classes: str | None = None, frames=("a.png", "b.png", "c.png")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(frames):
        write_ppm(root / "x.ppm", 60, 40, seed=i)
        from PIL import Image
        Image.open(root / "x.ppm").save(root / name)
    (root / "x.ppm").unlink()
    (root / "manifest.csv").write_text("path,label,left,top,right,bottom\n" + "".join(r + "\n" for r in rows))
    if classes is not None:
        (root / "classes.csv").write_text(classes)
    return root / "manifest.csv"


def test_a_manifest_of_frames_with_several_signs_and_an_empty_frame(tmp_path):
    path = write_frames(tmp_path, ["a.png,stop,1,2,11,12", "a.png,yield,20,5,30,15", "b.png,,,,,", "c.png,stop,0,0,60,40"],
                        "class_id,name,category\n0,stop,other\n1,yield,danger\n")
    data = manifest.read(path)
    t = data.table
    assert t.groupby(t["frame"].map(lambda p: Path(p).name))["class_id"].apply(list).to_dict() == \
        {"a.png": [0, 1], "b.png": [NO_SIGN], "c.png": [0]}
    assert data.classes["category"].tolist() == ["other", "danger"]
    assert data.summary["Training"]["without_signs"] == 1 and data.summary["Training"]["boxes"] == 3


@pytest.mark.parametrize("rows, classes, message", [
    (["a.png,stop,1,2,61,12"], None, "manifest.csv, line 2: box (left 1, top 2, right 61, bottom 12) is not inside its 60x40 frame"),
    (["a.png,stop,1,2,x,12"], None, "manifest.csv, line 2: right is 'x', not a number"),
    (["a.png,nope,1,2,9,12"], "class_id,name\n0,stop\n", "manifest.csv, line 2: label 'nope' is neither a class id nor"),
    (["a.png,stop,1,2,9,12"], "class_id,name,category\n0,stop,dangerous\n", "classes.csv, line 2: category 'dangerous'"),
    (["d.png,stop,1,2,9,12"], None, "manifest.csv, line 2: frame"),
])
def test_bad_frame_manifests_are_named(tmp_path, rows, classes, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        manifest.read(write_frames(tmp_path, rows, classes))


def test_synthetic_scenes_are_street_frames_with_the_crop_defaults_classes(tmp_path):
    path = synthetic.generate(tmp_path / "one", frames=24, seed=3, width=320, height=200)
    again = synthetic.generate(tmp_path / "two", frames=24, seed=3, width=320, height=200)
    assert path.read_bytes() == again.read_bytes()  # deterministic in the seed
    data = manifest.read(path)
    signs = data.table[data.table["class_id"] != NO_SIGN]
    sides = np.minimum(signs["right"] - signs["left"], signs["bottom"] - signs["top"])
    assert sides.min() >= 16 and sides.max() <= 130 * 1.1
    assert data.summary["Training"]["without_signs"] >= 1 and signs.groupby("frame").size().max() >= 2
    crop_names = formats.read("auto", Path(_synthetic_crops(tmp_path)), 0.0).names
    assert data.classes["name"].tolist() == crop_names  # a scene class is the crop model's class of that id
    assert set(data.classes["category"]) == {"prohibitory", "danger", "mandatory", "other"}
    # The signs are drawn where the boxes say: the box's pixels differ from the frame's surroundings.
    from PIL import Image
    first = signs.iloc[0]
    img = np.asarray(Image.open(first["frame"]).convert("RGB"), dtype=float)
    inside = img[int(first["top"]):int(first["bottom"]), int(first["left"]):int(first["right"])]
    assert inside.std() > 10


def _synthetic_crops(tmp_path, fmt: str = "belgiumtsc"):
    from tsloc.data.synthetic import generate
    generate(tmp_path / "crops", size=200 if fmt == "belgiumtsc" else 120, seed=0, fmt=fmt)
    return tmp_path / "crops"


def test_the_gtsdb_twin_reads_as_gtsdb_with_the_gtsrb_twins_classes(tmp_path):
    """`scenes.synthetic.format: gtsdb`: the package's layout and inclusive edges; its classes are the
    GTSRB twin's by id and name (so a crop model trained on that twin names them)."""
    from tsloc.data import gtsdb
    root = synthetic.generate(tmp_path / "scenes", frames=12, seed=2, width=320, height=200, fmt="gtsdb")
    assert root.name == "FullIJCNN2013" and len(list(root.glob("*.ppm"))) == 12
    data = gtsdb.read_frames(tmp_path / "scenes")
    signs = data.table[data.table["class_id"] != NO_SIGN]
    assert len(signs) == len((root / "gt.txt").read_text().splitlines()) and signs["class_id"].max() < 43
    first = (root / "gt.txt").read_text().splitlines()[0].split(";")  # leftCol;topRow;rightCol;bottomRow inclusive
    row = signs[signs["frame"].str.endswith(first[0])].iloc[0]
    assert [row["left"], row["top"], row["right"], row["bottom"]] == [int(first[1]), int(first[2]),
                                                                       int(first[3]) + 1, int(first[4]) + 1]
    assert data.classes["name"].tolist() == formats.read("auto", _synthetic_crops(tmp_path, "gtsrb"), 0.0).names


def test_the_split_is_by_frame_and_keeps_empty_frames_in_each_subset(tmp_path):
    path = synthetic.generate(tmp_path, frames=60, seed=1, width=200, height=160)
    table = manifest.read(path).table
    out, report = split_frames(table, 0.2, 0.2, seed=4)
    assert out.groupby("frame")["subset"].nunique().max() == 1  # every box of a frame where the frame goes
    assert report["frames"] == {"train": 36, "valid": 12, "test": 12} or sum(report["frames"].values()) == 60
    empty = out[out["class_id"] == NO_SIGN]
    assert set(empty["subset"]) == {"train", "valid", "test"} or len(empty) < 3
    again, _ = split_frames(table, 0.2, 0.2, seed=4)
    assert again["subset"].tolist() == out["subset"].tolist()
    other, _ = split_frames(table, 0.2, 0.2, seed=5)
    assert other["subset"].tolist() != out["subset"].tolist()


def test_gtsdb_signs_as_crops_for_the_namer(tmp_path):
    root = write_gtsdb(tmp_path, ["00000.ppm;10;5;29;24;14", "00000.ppm;40;10;59;30;1"], frames=(0, 1))
    data = formats.read("auto", root, 0.0, tmp_path / "crops")
    assert data.format == "gtsdb" and data.names[14] == "Stop"
    t = data.table
    assert t["class_id"].tolist() == [14, 1] and t["group"].nunique() == 1  # one frame: one group
    # 10% of the 20-px sign on each side: 2 px of border
    assert t[["left", "top", "right", "bottom"]].values.tolist()[0] == [2, 2, 22, 22]
    assert t[["width", "height"]].values.tolist()[0] == [24, 24]
    wide = formats.read("gtsdb", root, 0.5, tmp_path / "crops2").table  # 10 px each side, clipped at the top
    assert wide[["width", "height"]].values.tolist()[0] == [40, 35] and wide["top"][0] == 5


def test_the_signs_of_the_training_frames_train_a_namer_without_the_test_frames(tmp_path):
    """`tsloc scene-signs DIR`: the signs of the split's train and valid frames as a crop manifest,
    read back by the crop branch's reader with GTSDB's names, a frame's signs one group, and no sign
    of a test frame; a subset the split does not have is one message."""
    lines = [f"{i:05d}.ppm;{5 + i};5;{24 + i};24;{i % 3 + 12}" for i in range(10)] + ["00004.ppm;40;10;59;30;1"]
    data = gtsdb.read_frames(write_gtsdb(tmp_path / "gtsdb", lines, frames=range(10)))
    split, _ = split_frames(data.table, 0.2, 0.2, seed=0)
    (tmp_path / "data" / "scenes").mkdir(parents=True)
    split.to_csv(tmp_path / "data" / "scenes" / "split.csv", index=False)
    data.classes.to_csv(tmp_path / "data" / "scenes" / "classes.csv", index=False)
    done = run_cli("scene-signs", "signs", cwd=tmp_path)
    assert done.returncode == 0 and "8 signs of train and valid frames" in done.stdout, done.stderr
    crops = formats.read("auto", tmp_path / "signs", 0.1, tmp_path / "crops")
    kept = split[(split["class_id"] != NO_SIGN) & split["subset"].isin(["train", "valid"])]
    assert crops.format == "manifest" and len(crops.table) == len(kept) == 8 and crops.names[14] == "Stop"
    assert sorted(crops.table["class_id"]) == sorted(kept["class_id"])
    assert crops.table.groupby("group")["class_id"].count().max() == (2 if "00004.ppm" in set(kept["frame"].map(
        lambda f: Path(f).name)) else 1)
    test_frames = set(split.loc[split["subset"] == "test", "frame"].map(lambda f: Path(f).name))
    assert test_frames and not test_frames & set(crops.table["group"])
    assert signs_manifest(split, data.classes, ["test"], tmp_path / "t") == len(split[split["class_id"] != NO_SIGN]) - 8
    with pytest.raises(DataError, match="no subset 'training'"):
        signs_manifest(split, data.classes, ["training"], tmp_path / "x")


@pytest.mark.slow  # reads the 600 shared frames
def test_the_shared_gtsdb_training_part(tmp_path):
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtsdb"
    if not (shared / "restore.py").exists():
        pytest.skip("no shared GTSDB copy")
    import subprocess
    import sys
    subprocess.run([sys.executable, str(shared / "restore.py"), str(tmp_path), "--jpeg"], check=True, capture_output=True)
    data = gtsdb.read_frames(tmp_path)
    assert data.summary["Training"] == {"frames": 600, "with_signs": 506, "without_signs": 94, "boxes": 852,
                                        "classes": 43, "box_side_px": [17.0, 124.0]}
    assert data.summary["Testing"]["frames"] == 0
    assert data.classes["category"].value_counts().to_dict() == {"danger": 15, "prohibitory": 12, "other": 8, "mandatory": 8}
    _the_ready_german_pair_holds_its_card(data)
    shutil.rmtree(tmp_path / "FullIJCNN2013")


def _the_ready_german_pair_holds_its_card(data):
    """The shipped pair (`--model gtsdb`, int8 detector and int8 namer through ONNX Runtime) at its own
    operating point (chosen on the validation frames, in its metadata) on the 120 test frames the default
    scene split carves from the shared frames (as the run behind it split them): its card's test figures
    (made with the PyTorch namer and refiner: finding AP50 and AP, naming mAP50 and mAP, recall and precision)
    within 0.02: its int8 refiner (gtsdb.refiner.onnx) behind the detector keeps the boxes tight."""
    import tsloc
    from tsloc.data.frames import decode_frame
    from tsloc.pipeline.scenes_evaluate import score_scenes
    from tsloc.scenes.split import split_frames
    split, _ = split_frames(data.table, 0.2, 0.2, 0)
    test = split[split["subset"] == "test"]
    pair = tsloc.load("gtsdb", device="cpu")
    rows = [{"frame": f, **d, "scene_class_id": d["class_id"]} for f in dict.fromkeys(test["frame"])
            for d in pair.finder(decode_frame(f))]
    category = dict(zip(data.classes["class_id"], data.classes["category"]))
    figures, _, _ = score_scenes(test, rows, category, pair.point["min_score"], pair.point["min_probability"])
    card = pair.detector.meta["card"]["test"]
    assert test["frame"].nunique() == 120 and card["frames"] == 120
    assert type(pair.detector).__name__ == "Refined"
    for key in ("find_ap50", "find_ap", "map50", "map", "recall", "precision"):
        assert figures[key] >= card[key] - 0.02, (key, figures, card)
