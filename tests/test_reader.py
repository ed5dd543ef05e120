"""The reader of the official layout: quirks and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import write_ppm
from tsloc.data.belgiumtsc import folder_digest, image_size, read_dataset, read_split
from tsloc.errors import DataError


def test_reads_quirks(tiny_layout):
    df, summary = read_dataset(tiny_layout)
    assert summary["Training"] == {"rows": 6, "images": 5, "duplicate_rows_dropped": 1, "classes": 2, "class_folders": 2}
    assert summary["Testing"]["images"] == 1 and summary["Testing"]["class_folders"] == 2  # class 1 csv is empty
    assert df["class_id"].dtype.kind == "i" and df["left"].dtype.kind == "i"
    # The swapped GT axes come back as the true size and a (left, top, right, bottom) box.
    row = df[df["filename"] == "00001_00001.ppm"].iloc[0]
    assert (row.width, row.height) == (20, 50)
    assert (row.left, row.top, row.right, row.bottom) == (2, 5, 18, 45)
    assert row.group == 1
    dup = df[df["filename"] == "00005_00000.ppm"].iloc[0]
    assert dup.row_ids.split() == ["3", "5"]  # both rows of the duplicate, for the notebook split


def test_ppm_size_reads_header_with_comment(tmp_path):
    p = tmp_path / "a.ppm"
    p.write_bytes(b"P6\n# made by a test\n7 5\n255\n" + bytes(7 * 5 * 3))
    assert image_size(p) == (7, 5)


def _layout_with(tmp_path, rows, make_image=True, name="00001_00000.ppm", size=(30, 20)):
    root = tmp_path / "bad"
    folder = root / "Training" / "00003"
    folder.mkdir(parents=True)
    if make_image:
        write_ppm(folder / name, *size)
    (folder / "GT-00003.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n" + rows)
    return root, folder


@pytest.mark.parametrize("row, message", [
    ("00001_00000.ppm;20;30;2;x;18;28;3\n", r"GT-00003.csv, line 2: Roi.Y1 is 'x'"),
    ("00001_00000.ppm;20;30;2;3;18;28;4\n", r"line 2: ClassId 4 disagrees with its folder 00003"),
    ("00001_00000.ppm;20;30;2;3;18;31;3\n", r"line 2: box \(left 3, top 2, right 31, bottom 18\) is not inside its 30x20 image"),
    ("00001_00000.ppm;30;20;2;3;18;28;3\n", r"line 2: Width=30;Height=20 disagree with the image"),
    ("00001_00000.ppm;20;30;2;3;18\n", r"GT-00003.csv, line 2: Roi.Y2 is ''"),
    ("00001_00000.ppm;20;30;2;3;18;28;3\n00001_00001.ppm;20;30;2;3;18;28;3;9;9\n", r"GT-00003.csv: malformed csv"),
    ("00002_00000.ppm;20;30;2;3;18;28;3\n", r"line 2: image .*00002_00000.ppm not found"),
    ("sign.ppm;20;30;2;3;18;28;3\n", r"line 2: file name 'sign.ppm' is not PPPPP_VVVVV"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    root, _ = _layout_with(tmp_path, row)
    with pytest.raises(DataError, match=message):
        read_split(root, "Training")


def test_same_name_twice_with_different_values(tmp_path):
    root, _ = _layout_with(tmp_path, "00001_00000.ppm;20;30;2;3;18;28;3\n00001_00000.ppm;20;30;2;3;17;28;3\n")
    with pytest.raises(DataError, match="line 3: 00001_00000.ppm is listed twice"):
        read_split(root, "Training")


def test_truncated_and_unreadable_images(tmp_path):
    root, folder = _layout_with(tmp_path, "00001_00000.ppm;20;30;2;3;18;28;3\n")
    image = folder / "00001_00000.ppm"
    image.write_bytes(image.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"00001_00000.ppm: truncated image \(1803 bytes, its header needs 1813\)"):
        read_split(root, "Training")
    image.write_bytes(b"GIF89a not a ppm at all")
    with pytest.raises(DataError, match="00001_00000.ppm: unreadable image"):
        read_split(root, "Training")


def test_missing_folder_and_csv(tmp_path):
    with pytest.raises(DataError, match="Training: folder not found"):
        read_split(tmp_path, "Training")
    (tmp_path / "Training" / "00000").mkdir(parents=True)
    with pytest.raises(DataError, match=r"GT-00000.csv: GT csv file not found"):
        read_split(tmp_path, "Training")


def test_folder_digest_follows_the_shared_readme(tmp_path):
    import hashlib
    (tmp_path / "Training" / "00000").mkdir(parents=True)
    (tmp_path / "Training" / "00000" / "b.txt").write_bytes(b"bee")
    (tmp_path / "Training" / "a.txt").write_bytes(b"a")
    h = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    text = f"{h(b'bee')}  Training/00000/b.txt\n{h(b'a')}  Training/a.txt\n"
    assert folder_digest(tmp_path, "Training") == {"files": 2, "digest": h(text.encode())}


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_layout):
    (tiny_layout / "Training" / "00000" / "00001_00001.ppm").unlink()
    (tmp_path / "params.yaml").write_text(f"data: {{source: local, path: {tiny_layout}}}\n")
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "ingest"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "tsloc ingest: error:" in proc.stderr and "00001_00001.ppm not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "metadata.csv").exists() and not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / "metrics").exists()
    assert os.listdir(tmp_path / "data") == []  # no temporary leftovers either


def test_cli_ingest_local_folder_in_place(tmp_path, tiny_layout):
    (tmp_path / "params.yaml").write_text("data: {source: local, path: tiny}\n")
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "ingest"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert metrics["Training"]["images"] == 5 and metrics["Training"]["duplicate_rows_dropped"] == 1
    assert metrics["Training"]["fingerprint"] == folder_digest(tiny_layout, "Training")
    source = json.loads((tmp_path / "data" / "raw" / "SOURCE.json").read_text())
    assert source == {"source": "local", "path": str(tiny_layout)}


def test_relative_data_path_is_taken_from_the_repository(tmp_path):
    from tsloc.paths import repo_root
    assert repo_root(tmp_path) == tmp_path.resolve()
    temp_exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp_exp.mkdir(parents=True)
    assert repo_root(temp_exp) == (tmp_path / "repo").resolve()
