"""`tsloc predict` and `tsloc export` with a stub model of known output."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import STUB_BOX as BOX, random_model, reference_answers, run_cli, stub_model as _stub
from tsloc.serving.backend import load_backend

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    rgb = lambda w, h: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(rgb(40, 30)).save(root / "a.ppm")
    Image.fromarray(rgb(25, 50)[:, :, 0]).save(root / "grey.png")               # L
    Image.fromarray(np.dstack([rgb(33, 21), rgb(33, 21)[:, :, :1]])).save(root / "alpha.png")  # RGBA
    Image.fromarray(rgb(44, 36)).convert("P").save(root / "palette.png")        # P
    (root / "sub").mkdir()
    Image.fromarray(rgb(60, 45)).save(root / "sub" / "c.jpg")
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (root / "notes.txt").write_text("not an image, and not picked from a folder")
    return root


def _predict(*args, model):
    return run_cli("predict", *args, "--model", model)


SIZES = {"a.ppm": (40, 30), "grey.png": (25, 50), "alpha.png": (33, 21), "palette.png": (44, 36), "c.jpg": (60, 45)}


def test_predict_folder_jsonl_boxes_in_original_pixels(images, tmp_path):
    model = _stub(tmp_path / "stub.pt")
    proc = _predict(images, "--top-k", "3", "--draw", tmp_path / "drawn", "--batch-size", "2", model=model)
    assert proc.returncode == 1  # one file failed
    assert "broken.png: unreadable image" in proc.stderr and "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["path"].rsplit("/", 1)[1] for r in records) == sorted(SIZES)
    for r in records:
        w, h = SIZES[r["path"].rsplit("/", 1)[1]]
        assert r["box"] == pytest.approx([BOX[0] * w, BOX[1] * h, BOX[2] * w, BOX[3] * h], abs=0.02)
        assert r["class_id"] == 3 and r["class_name"] == "class 3"
        assert [t["class_id"] for t in r["top_k"]] == [3, 0, 1]
        assert r["probability"] == r["top_k"][0]["probability"] > r["top_k"][1]["probability"]
        assert set(r) == {"path", "class_id", "class_name", "probability", "top_k", "box"}
    drawn = sorted(p.relative_to(tmp_path / "drawn").as_posix() for p in (tmp_path / "drawn").rglob("*.png"))
    assert drawn == ["a.png", "alpha.png", "grey.png", "palette.png", "sub/c.png"]
    assert Image.open(tmp_path / "drawn" / "sub" / "c.png").size == (60, 45)


def test_predict_files_csv(images, tmp_path):
    model = _stub(tmp_path / "stub.pt", winner=7)
    proc = _predict(images / "a.ppm", images / "grey.png", "--format", "csv", "--top-k", "2", model=model)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["class_id"] for r in rows] == ["7", "7"]
    assert rows[1]["top_k_ids"] == "7|0"
    assert float(rows[1]["right"]) == pytest.approx(0.6 * 25, abs=0.02)
    assert float(rows[1]["bottom"]) == pytest.approx(0.9 * 50, abs=0.02)


def test_non_image_given_explicitly_fails_but_others_run(images, tmp_path):
    proc = _predict(images / "notes.txt", images / "a.ppm", model=_stub(tmp_path / "stub.pt"))
    assert proc.returncode == 1 and "notes.txt: unreadable image" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1


def test_without_a_model_the_pipelines_is_used_else_the_ready_one_and_stderr_says_which(images, tmp_path):
    """Before any training (no models/model.pt here) predict answers with the ready model; once the
    pipeline's model exists, with it. The first stderr line names the one that answered."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = run_cli("predict", images / "a.ppm", cwd=fresh)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("tsloc predict: the ready model belgiumtsc (models/model.pt does not exist)")
    (fresh / "models").mkdir()
    _stub(fresh / "models" / "model.pt")
    proc = run_cli("predict", images / "a.ppm", cwd=fresh)
    assert proc.returncode == 0 and proc.stderr.startswith("tsloc predict: models/model.pt (the pipeline's)")
    assert json.loads(proc.stdout)["class_name"] == "class 3"  # the stub's answer


def test_missing_empty_and_folder_paths_are_said_plainly_and_the_rest_go_on(images, tmp_path):
    model = _stub(tmp_path / "stub.pt")
    (tmp_path / "empty.png").write_bytes(b"")
    proc = _predict(tmp_path / "nope.png", tmp_path / "empty.png", images / "a.ppm", model=model)
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1
    assert "nope.png: no such file" in proc.stderr and "empty.png: empty file (0 bytes)" in proc.stderr
    assert "Errno" not in proc.stderr


def test_a_quoted_pattern_and_standard_input(images, tmp_path, monkeypatch):
    """`tsloc predict "crops/*.png"` (the shell left the pattern alone) expands it; `-` reads one image
    from standard input."""
    model = _stub(tmp_path / "stub.pt")
    proc = _predict(str(images / "*.png"), model=model)
    assert proc.returncode == 0 and sorted(Path(json.loads(r)["path"]).name for r in proc.stdout.splitlines()) == \
        ["alpha.png", "grey.png", "palette.png"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((images / "sub" / "c.jpg").read_bytes())))
    proc = _predict("-", model=model)
    rec = json.loads(proc.stdout)
    assert proc.returncode == 0 and rec["path"] == "-" and rec["box"] is not None, proc.stderr


def test_an_unknown_model_name_lists_the_ready_models(images, tmp_path):
    proc = run_cli("predict", images / "a.ppm", "--model", "belgium", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "belgium: neither a model file nor a ready model (the ready models: belgiumtsc, gtsrb, gtsdb)" in proc.stderr


def test_missing_and_incompatible_model(images, tmp_path):
    proc = _predict(images / "a.ppm", model=tmp_path / "none.pt")
    assert proc.returncode == 2 and "none.pt: model file not found" in proc.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    proc = _predict(images / "a.ppm", model=tmp_path / "junk.pt")
    assert proc.returncode == 2 and "junk.pt: not a compatible tsloc model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # torch.export traces the whole network (about 10 s each)
@pytest.mark.parametrize("box", ["pooled", "spatial"])
def test_export_pt2_matches_pytorch(tmp_path, box):
    from tsloc.crops.export import export
    model, ckpt = random_model(tmp_path, box)
    assert ckpt["box_head"] == box and model.box_kind == box
    path = export(model, ckpt, "pt2", tmp_path / "m.pt2")
    program = torch.export.load(str(path)).module()
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    probs, boxes = program(x)
    ref_p, ref_b = reference_answers(model, ckpt, x)
    assert torch.equal(probs.argmax(1), ref_p.argmax(1))
    assert torch.allclose(probs, ref_p, atol=1e-5) and torch.allclose(boxes, ref_b, atol=1e-5)


def test_draw_never_overwrites(tmp_path):
    """a.jpg and a.png both draw (a.png, a-1.png), and a file already in the folder is left as it was."""
    from tsloc.serving.predict import predict_files
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "a.png", "b.png"):
        Image.new("RGB", (30, 20), (200, 10, 10)).save(folder / name)
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    (drawn / "b.png").write_bytes(b"mine")
    backend = load_backend(_stub(tmp_path / "stub.pt"))
    assert predict_files(backend, [str(folder)], draw_dir=str(drawn), out=io.StringIO()) == 0
    assert sorted(p.name for p in drawn.iterdir()) == ["a-1.png", "a.png", "b-1.png", "b.png"]
    assert (drawn / "b.png").read_bytes() == b"mine"


def test_no_images_is_a_message_and_exit_1(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    proc = _predict(tmp_path / "empty", model=_stub(tmp_path / "stub.pt"))
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert "tsloc predict: no image files in" in proc.stderr and "empty" in proc.stderr


def test_exif_orientation_is_applied_and_boxes_refer_to_the_upright_image(tmp_path):
    """A photo stored sideways (EXIF orientation 6) is 60 x 40 upright: its box is in those pixels."""
    from tsloc.serving.predict import predict_files
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 40), (10, 200, 10)).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "turned.jpg", exif=exif)
    backend = load_backend(_stub(tmp_path / "stub.pt"))
    out = io.StringIO()
    predict_files(backend, [str(tmp_path / "turned.jpg")], out=out)
    box = json.loads(out.getvalue())["box"]
    assert box == pytest.approx([BOX[0] * 60, BOX[1] * 40, BOX[2] * 60, BOX[3] * 40], abs=0.02)


def test_huge_images_are_refused_by_name_and_the_rest_go_on(tmp_path, monkeypatch):
    """Also when threads decode them side by side (a warnings filter around each decode let some through)."""
    from tsloc.serving.predict import predict_files
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's bomb limit, made small for the test
    for i in range(16):
        for name, size in (("small", (20, 20)), ("over", (40, 30)), ("bomb", (100, 100))):
            Image.new("RGB", size).save(tmp_path / f"{i:02}{name}.png")
    backend = load_backend(_stub(tmp_path / "stub.pt"))
    out, err = io.StringIO(), io.StringIO()
    assert predict_files(backend, [str(tmp_path)], batch_size=4, out=out, err=err) == 32
    assert [json.loads(line)["path"].rsplit("/", 1)[1] for line in out.getvalue().splitlines()] == \
        [f"{i:02}small.png" for i in range(16)]
    for i in range(16):
        for name in ("over", "bomb"):
            assert f"{i:02}{name}.png: image too large to decode" in err.getvalue()


def test_a_symlink_loop_does_not_trap_the_walk(tmp_path):
    from tsloc.serving.predict import collect
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "sub" / "x.png")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert [name.as_posix() for _, name in collect([str(tmp_path)])] == ["sub/x.png"]


@pytest.mark.slow  # a real process (exit status, no traceback): a fresh interpreter imports torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_one_clear_error(images, tmp_path):
    from tsloc.errors import DataError
    from tsloc.device import select_device
    with pytest.raises(DataError, match=r"device 'cuda': CUDA is not available on this machine"):
        select_device("cuda")
    assert select_device("auto").type == "cpu" and select_device("cpu").type == "cpu"
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "predict", str(images / "a.ppm"), "--model",
                           str(_stub(tmp_path / "stub.pt")), "--device", "cuda:1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert "tsloc predict: error: device 'cuda:1': CUDA is not available" in proc.stderr


def test_predict_without_model_says_which_model_answers(images, tmp_path):
    """After the Quickstart models/model.pt is the synthetic data's: predict says so on stderr."""
    (tmp_path / "models").mkdir()
    _stub(tmp_path / "models" / "model.pt")
    run = lambda: run_cli("predict", images / "a.ppm", cwd=tmp_path)  # noqa: E731
    bare = run()
    assert bare.returncode == 0 and json.loads(bare.stdout)["class_id"] == 3
    assert "models/model.pt (the pipeline's): recipe notebook, 62 classes (no pipeline reports" in bare.stderr
    (tmp_path / "reports").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "reports" / "ingest.json").write_text(json.dumps({"source": "synthetic", "format": "gtsrb"}))
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"test": {"accuracy": 0.9421875}}))
    told = run().stderr
    assert "trained on synthetic GTSRB data; test accuracy 94.22% (metrics/evaluate.json)" in told
    assert "--model FILE" in told
    assert _predict(images / "a.ppm", model=tmp_path / "models" / "model.pt").stderr == ""  # asked for: quiet


def test_evaluate_refuses_a_model_that_does_not_fit_the_store_or_the_data(tmp_path):
    """A stale or copied models/model.pt (another input size, fewer classes): one message, exit 2."""
    import pandas as pd
    (tmp_path / "models").mkdir()
    _stub(tmp_path / "models" / "model.pt", image_size=64)
    (tmp_path / "data" / "features").mkdir(parents=True)
    np.save(tmp_path / "data" / "features" / "images.npy", np.zeros((2, 96, 96, 3), np.uint8))
    pd.DataFrame({"subset": ["valid", "test"], "class_id": [0, 70]}).to_csv(tmp_path / "data" / "split.csv",
                                                                              index=False)
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = run_cli("evaluate", cwd=tmp_path)
    assert proc.returncode == 2 and "the model takes 64-px images but data/features/images.npy holds 96-px" \
        in proc.stderr
    np.save(tmp_path / "data" / "features" / "images.npy", np.zeros((2, 64, 64, 3), np.uint8))
    proc = run_cli("evaluate", cwd=tmp_path)
    assert proc.returncode == 2 and "knows 62 classes but data/split.csv has class id 70" in proc.stderr
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "reports").exists()  # nothing written


def test_decoding_runs_ahead_in_order_and_in_bounded_memory(tmp_path, monkeypatch):
    """Threads decode up to AHEAD batches ahead of the caller, never more; batches come in file order,
    the same as decoding in the caller's thread; an unreadable file is its error, in its place."""
    import tsloc.serving.predict as predict
    for i in range(23):
        Image.new("RGB", (20 + i, 20), (i, 0, 0)).save(tmp_path / f"{i:02}.png")
    (tmp_path / "07.png").write_bytes(b"broken")
    files = predict.collect([str(tmp_path)])
    decoded, prepare = [], predict.prepare
    monkeypatch.setattr(predict, "prepare", lambda *a, **k: decoded.append(1) or prepare(*a, **k))
    seen, most_ahead = [], 0
    for batch in predict.decoded_batches(files, 16, 4, threads=3):
        seen.append(batch)
        time.sleep(0.05)  # the threads get time to run as far ahead as they are allowed
        most_ahead = max(most_ahead, len(decoded) - 4 * len(seen))
    assert 0 < most_ahead <= predict.AHEAD * 4
    flat = [b for batch in seen for b in batch]
    assert [len(b) for b in seen] == [4, 4, 4, 4, 4, 3]
    assert isinstance(flat[7], predict.DataError) and "07.png" in str(flat[7])
    assert [b.size[0] for b in flat if not isinstance(b, Exception)] == [20 + i for i in range(23) if i != 7]
    inline = [b for batch in predict.decoded_batches(files, 16, 4, threads=0) for b in batch]
    assert [getattr(b, "size", None) for b in inline] == [getattr(b, "size", None) for b in flat]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(inline, flat) if not isinstance(a, Exception))


def test_batch_size_is_bounded(images, tmp_path):
    proc = _predict(images / "a.ppm", "--batch-size", "257", model=_stub(tmp_path / "stub.pt"))
    assert proc.returncode == 2 and "--batch-size must be between 1 and 256" in proc.stderr and proc.stdout == ""


def test_detect_with_no_detector_says_how_to_get_one(images, tmp_path):
    """A fresh install: no models/ at all. One line saying how to get a detector, not a traceback (an
    install without PyTorch used to fail importing torch for the missing .pt's name)."""
    proc = run_cli("detect", images / "a.ppm", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert "models/detector.pt: no detector here; train one with `dvc repro detector_train`" in proc.stderr
