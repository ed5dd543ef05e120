"""The scene branch's detector, windows, namer and metrics: pieces checked by hand, and a tiny
training run that learns."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import STUB_BOX, run_cli, stub_model
from tsloc.serving.backend import load_backend
from tsloc.errors import DataError
from tsloc.scenes import model as det
from tsloc.serving.find import Finder
from tsloc.pipeline.scenes_evaluate import score_scenes
from tsloc.scenes.evaluation import evaluate
from tsloc.scenes.operating_point import Matcher, choose, choose_box, sweep
from tsloc.serving.namer import crop_windows, match_classes
from tsloc.scenes.windows import cut_window, window_plan


def _truth():
    rows = [("a", 0, 10, 10, 50, 50), ("a", 1, 100, 20, 140, 60), ("b", 0, 10, 10, 50, 50), ("c", -1, None, None, None, None)]
    return pd.DataFrame([{"frame": f, "width": 200, "height": 100, "class_id": c, "left": l, "top": t, "right": r,
                          "bottom": b} for f, c, l, t, r, b in rows])


def test_average_precision_against_a_hand_computed_case():
    """Three signs; by score: a hit, a false alarm, a hit at IoU 0.82, one sign missed. Recall 1/3, 1/3,
    2/3 at precision 1, 1/2, 2/3: COCO's 101-point AP at 0.5 is (34 x 1 + 33 x 2/3) / 101."""
    found = [{"frame": "a", "box": [10, 10, 50, 50], "score": 0.9, "class_id": 0},
             {"frame": "a", "box": [150, 60, 190, 95], "score": 0.8, "class_id": 0},
             {"frame": "b", "box": [14, 10, 54, 50], "score": 0.7, "class_id": 0}]
    result = evaluate(_truth(), found)
    assert result["ap50"] == pytest.approx((34 + 33 * 2 / 3) / 101, abs=1e-6)
    rows = [{**d, "probability": 1.0, "scene_class_id": 0} for d in found]
    assert Matcher(_truth(), rows).figures(0.0, 0.0)["recall"] == pytest.approx(2 / 3)
    assert Matcher(_truth(), rows[:1]).figures(0.0, 0.0)["recall"] == pytest.approx(1 / 3)
    # Per class: class 0 has two signs, both found (AP 1 over 0.5 once the false alarm is named class 1);
    # class 1's one sign is missed and the false alarm is its only detection (AP 0).
    named = [found[0], {**found[1], "class_id": 1}, found[2]]
    per = evaluate(_truth(), named, category=lambda c: c + 1)
    assert per["ap50_per_category"] == {1: pytest.approx(1.0), 2: pytest.approx(0.0)}
    assert per["ap50"] == pytest.approx(0.5)
    nothing = evaluate(_truth(), [])
    assert nothing["ap50"] == 0.0
    # Nothing found still has a curve (precision 0 at each of the 101 recall steps), as a found one has:
    # an empty curve is a plot `dvc plots show` draws with no size at all.
    assert nothing["pr"] == (result["pr"][0], [0.0] * 101) and len(result["pr"][1]) == 101


def test_naming_ap_ranks_every_detection_and_the_operating_point_only_moves_recall():
    """Every sign of `_truth()` found and named right, one (class 1) with a probability under
    `min_probability`: it is still ranked for AP (mean AP 1.0, as COCO scores every detection), and
    only recall and precision at the operating point leave it out."""
    def row(frame, box, score, probability, class_id):
        return {"frame": frame, "detector_box": box, "box": box, "score": score, "probability": probability,
                "scene_class_id": class_id}
    rows = [row("a", [10, 10, 50, 50], 0.9, 0.9, 0), row("a", [100, 20, 140, 60], 0.8, 0.3, 1),
            row("b", [10, 10, 50, 50], 0.7, 0.95, 0)]
    category = {0: "prohibitory", 1: "danger"}
    figures, curves, kept = score_scenes(_truth(), rows, category, min_score=0.3, min_probability=0.5)
    assert figures["map50"] == pytest.approx(1.0) and figures["find_ap50"] == pytest.approx(1.0)
    assert figures["ap50_category"] == {"danger": pytest.approx(1.0), "prohibitory": pytest.approx(1.0)}
    assert figures["recall"] == pytest.approx(2 / 3) and figures["precision"] == pytest.approx(1.0) and len(kept) == 2
    assert len(curves["find"][1]) == len(curves["named"][1]) == 101
    lower, _, kept = score_scenes(_truth(), rows, category, min_score=0.3, min_probability=0.2)
    assert lower["recall"] == pytest.approx(1.0) and lower["map50"] == figures["map50"] and len(kept) == 3
    # Named wrong (class 0 for the class-1 sign): a false alarm of class 0 and a miss of class 1.
    wrong = score_scenes(_truth(), [*rows[:1], {**rows[1], "scene_class_id": 0}, rows[2]], category, 0.3, 0.5)[0]
    assert wrong["map50"] < 1.0 and wrong["find_ap50"] == pytest.approx(1.0)
    unscored = score_scenes(_truth(), rows, category, 0.3, 0.5, scored=False)[0]
    assert unscored["map50"] is None and set(unscored["ap50_category"].values()) == {None}


def _row(frame, box, score, probability=0.9, class_id=0):
    return {"frame": frame, "detector_box": box, "box": box, "score": score, "probability": probability,
            "scene_class_id": class_id}


def test_each_reported_detection_is_a_sign_or_a_false_positive_of_a_kind():
    """Frame a: its class-0 sign found twice (the second a duplicate), its class-1 sign boxed loosely
    (IoU 0.325) and named; something where no sign is; frame b's sign named class 1 (a wrong class);
    c has no sign and one weak find (under the threshold: not kept)."""
    rows = [_row("a", [10, 10, 50, 50], 0.9), _row("a", [12, 10, 52, 50], 0.8), _row("a", [100, 20, 113, 60], 0.7, class_id=1),
            _row("a", [160, 60, 190, 95], 0.6), _row("b", [10, 10, 50, 50], 0.95, probability=0.97, class_id=1),
            _row("c", [10, 10, 50, 50], 0.2)]
    m = Matcher(_truth(), rows)
    assert m.kinds(0.3, 0.5).tolist() == ["sign", "duplicate", "loose box", "background", "wrong class", ""]
    f = m.figures(0.3, 0.5)
    assert (f["kept"], f["missed"], f["duplicate"], f["loose box"], f["background"]) == (5, 1, 1, 1, 1)
    assert f["precision"] == pytest.approx(2 / 5) and f["recall"] == pytest.approx(2 / 3)
    assert f["named_precision"] == pytest.approx(1 / 5) and f["named_recall"] == pytest.approx(1 / 3)
    # the duplicate's higher twin is what matched: raising its own threshold past 0.8 leaves the first alone
    assert m.kinds(0.85, 0.5).tolist() == ["sign", "", "", "", "wrong class", ""]
    # a probability floor drops what the namer is unsure of, whatever the detector's score
    assert m.kinds(0.0, 0.95).tolist() == ["", "", "", "", "wrong class", ""]


def test_the_operating_point_meets_both_targets_with_the_best_f1_else_the_best_f1_of_all():
    """Two true signs and their finds at 0.9 and 0.6 with a false alarm at 0.7: threshold 0.65 keeps one
    sign (P 1/2, R 1/2), 0.75 one (P 1, R 1/2), 0.55 all (P 2/3, R 1): the best F1 is 0.8 at
    0.55 and below; with targets met by none it is still there, `met` false; targets of 0.5 each: the
    rows tied at the best F1 that meet them give the middle of the tied range."""
    truth = _truth()[lambda t: t["frame"] == "a"]
    rows = [_row("a", [10, 10, 50, 50], 0.9), _row("a", [160, 60, 190, 95], 0.7), _row("a", [100, 20, 140, 60], 0.6)]
    table = sweep(Matcher(truth, rows), scores=[0.55, 0.65, 0.75], probabilities=[0.0])
    assert table["precision"].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    point = choose(table, 0.95, 0.95)
    assert (point["min_score"], point["met"]) == (0.55, False) and point["f1"] == pytest.approx(0.8)
    assert choose(table, 0.9, 0.5)["min_score"] == 0.75 and choose(table, 0.9, 0.5)["met"]
    tied = sweep(Matcher(truth, rows[:1]), scores=[0.1, 0.3, 0.5, 0.7, 0.8, 0.95], probabilities=[0.0])
    assert choose(tied, 0.5, 0.5)["min_score"] == 0.5  # P 1, R 1/2 at 0.1 .. 0.8 (and nothing at 0.95)


def test_detect_takes_the_operating_point_from_the_detector_else_beside_it_else_the_fallback(tmp_path):
    from tsloc.errors import ModelFileError
    from tsloc.serving.find import FALLBACK, operating_point

    class Detector:
        meta = {}
    file = tmp_path / "detector.onnx"
    assert operating_point(Detector(), file) == {**FALLBACK, "box": "namer", "vote_iou": 0.0,
                                                 "chosen": "the fallback (no point chosen for this detector)"}
    (tmp_path / "operating_point.json").write_text(json.dumps({"min_score": 0.45, "min_probability": 0.2,
                                                               "box": "detector", "vote_iou": 0.7}))
    assert operating_point(Detector(), file) == {"min_score": 0.45, "min_probability": 0.2, "box": "detector",
                                                 "vote_iou": 0.7, "chosen": str(tmp_path / "operating_point.json")}
    assert operating_point(Detector(), file, 0.7)["min_score"] == 0.7  # a number given wins; the other stays chosen
    assert operating_point(Detector(), file, 0.7)["min_probability"] == 0.2
    assert operating_point(Detector(), file, 0.7, 0.1)["chosen"] == "given"
    shipped = Detector()
    shipped.meta = {"operating_point": {"min_score": 0.6, "min_probability": 0.4}}  # a ready pair's: in its metadata
    assert operating_point(shipped, file)["min_score"] == 0.6 and operating_point(shipped, file)["vote_iou"] == 0.0
    (tmp_path / "operating_point.json").write_text("{}")
    with pytest.raises(ModelFileError, match="operating_point.json: not an operating point"):
        operating_point(Detector(), file)


def test_classes_match_by_id_else_by_name_and_unknown_ones_are_named():
    scene = pd.DataFrame({"class_id": [0, 1], "name": ["stop", "yield"], "category": ["other", "other"]})
    assert match_classes(scene, ["stop", "yield", "other"]).tolist() == [0, 1, -1]     # same ids, same names
    assert match_classes(scene, ["yield", "x", "stop"]).tolist() == [1, -1, 0]         # by name
    with pytest.raises(DataError, match=r"the crop model does not know 1 of the scene classes \(1 'yield'\)"):
        match_classes(scene, ["stop", "give way"])


def test_crop_windows_grow_by_the_margin_and_stay_in_the_frame():
    windows = crop_windows(np.array([[50, 20, 90, 60], [0, 0, 10, 10]]), 100, 80, 0.1)
    assert windows.tolist() == [[46, 16, 94, 64], [0, 0, 11, 11]]


def test_a_detection_is_named_and_its_box_refined_by_the_crop_model(tmp_path):
    """A stub detector that finds one box, and the stub crop model (class 3; its box STUB_BOX of the crop)."""
    def one(frame, min_score, vote_iou=0.0):
        return np.array([[50.0, 20.0, 90.0, 60.0]]), np.array([0.8])
    namer = load_backend(stub_model(tmp_path / "m.pt"))
    found = Finder(one, namer)(np.zeros((100, 200, 3), np.uint8))
    assert len(found) == 1 and found[0]["class_id"] == 3 and found[0]["score"] == pytest.approx(0.8)
    l, t, r, b = STUB_BOX  # of the crop window (46, 16, 94, 64): 48 x 48 px, the margin of 10%
    assert found[0]["box"] == pytest.approx([46 + l * 48, 16 + t * 48, 46 + r * 48, 16 + b * 48], abs=0.05)
    assert found[0]["detector_box"] == [50.0, 20.0, 90.0, 60.0]
    kept = Finder(one, namer, box="detector")(np.zeros((100, 200, 3), np.uint8))  # the detector's box reported
    assert kept[0]["box"] == kept[0]["detector_box"] == [50.0, 20.0, 90.0, 60.0] and kept[0]["class_id"] == 3


def test_a_refiner_replaces_the_detector_s_boxes_and_keeps_its_scores(tmp_path):
    """The second stage (tsloc.serving.backend.Refined): each found box cut with the refiner's margin (10%: the
    stub's file says none) and replaced by the refiner's box there (the stub's STUB_BOX of the crop); the
    scores and an empty find as the detector gave them."""
    from tsloc.serving.backend import Refined

    def one(frame, min_score=0.0, vote_iou=0.0):
        return (np.array([[50.0, 20.0, 90.0, 60.0]], np.float32) if min_score < 0.9 else np.zeros((0, 4), np.float32),
                np.array([0.8]) if min_score < 0.9 else np.zeros(0))
    one.meta, one.name = {"kind": "detector"}, "stub"
    refined = Refined(one, load_backend(stub_model(tmp_path / "r.pt")))
    boxes, scores = refined(np.zeros((100, 200, 3), np.uint8))
    l, t, r, b = STUB_BOX  # of the crop window (46, 16, 94, 64)
    assert boxes[0] == pytest.approx([46 + l * 48, 16 + t * 48, 46 + r * 48, 16 + b * 48], abs=0.05)
    assert scores.tolist() == [0.8] and boxes.dtype == np.float32 and refined.meta == one.meta
    assert len(refined(np.zeros((100, 200, 3), np.uint8), 0.95)[0]) == 0


def test_on_a_gpu_a_crop_model_runs_few_batch_sizes_and_answers_each_image_as_alone(tmp_path):
    """GpuBatches (what load_backend gives on a GPU): the counts of a frame's detections, 0 to 130, run at
    8 batch sizes (powers of two to 64, then multiples of 64), and each image's answer is its own: the
    stub crop model's answers, wrapped or not, are the same; an empty batch is not padded."""
    from tsloc.serving.backend import GpuBatches, bucket

    class Seen:  # answers each image by its own pixels, and notes the batch sizes it ran
        meta, name, sizes = {"class_names": ["a", "b"]}, "seen", []

        def __call__(self, images):
            self.sizes.append(len(images))
            mean = images.reshape(len(images), 48).mean(1, dtype=np.float64)
            return np.stack([mean, -mean], 1), np.stack([mean] * 4, 1)

    seen = GpuBatches(Seen())
    rng = np.random.default_rng(0)
    for n in range(131):
        images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
        probs, boxes = seen(images)
        assert probs.shape == (n, 2) and boxes.shape == (n, 4)
        assert np.array_equal(probs[:, 0], images.reshape(n, 48).mean(1, dtype=np.float64))
    assert sorted(set(Seen.sizes)) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 192] and bucket(65) == 128 and bucket(64) == 64
    stub = load_backend(stub_model(tmp_path / "m.pt"))
    images = rng.integers(0, 256, (5, *[stub.meta["image_size"]] * 2, 3), dtype=np.uint8)
    wrapped = GpuBatches(stub)
    assert wrapped.meta == stub.meta and wrapped.name == stub.name
    for mine, alone in zip(wrapped(images), stub(images)):
        assert mine.shape == alone.shape and np.allclose(mine, alone, atol=1e-6)


def test_load_detector_puts_the_refiner_beside_it_behind_it(tmp_path):
    """models/detector*.onnx with models/refiner.onnx, a ready pair's gtsdb.detector.onnx with gtsdb.refiner.onnx,
    a .pt detector with refiner.pt; refine=False (the export stage's parity), a lone detector and one whose
    refiner's file says it loosened the validation signs' boxes (`tightens` false): unrefined."""
    import shutil

    from tsloc.onnxfile import read_meta, set_meta
    from tsloc.serving.backend import OnnxDetector, Refined, load_detector, refiner_beside
    from tsloc.serving.ready import FOLDER
    from pathlib import Path
    assert refiner_beside("models/detector.pt") == Path("models/refiner.pt")
    assert refiner_beside("models/detector.int8.onnx") == Path("models/refiner.onnx")
    assert refiner_beside(FOLDER / "gtsdb.detector.onnx") == FOLDER / "gtsdb.refiner.onnx"
    shutil.copyfile(FOLDER / "gtsdb.detector.onnx", tmp_path / "detector.onnx")
    assert isinstance(load_detector(tmp_path / "detector.onnx"), OnnxDetector)
    shutil.copyfile(FOLDER / "belgiumtsc.int8.onnx", tmp_path / "refiner.onnx")
    assert isinstance(load_detector(tmp_path / "detector.onnx"), Refined)
    assert isinstance(load_detector(tmp_path / "detector.onnx", refine=False), OnnxDetector)
    set_meta(tmp_path / "refiner.onnx", read_meta(tmp_path / "refiner.onnx") | {"tightens": False})
    assert isinstance(load_detector(tmp_path / "detector.onnx"), OnnxDetector)
    set_meta(tmp_path / "refiner.onnx", read_meta(tmp_path / "refiner.onnx") | {"tightens": True})
    assert isinstance(load_detector(tmp_path / "detector.onnx"), Refined)


def test_the_ready_pair_refines_its_boxes_unless_told_not_to(tmp_path):
    """`tsloc detect --model gtsdb`: the pair's refiner behind its detector, said on stderr; `--no-refine`: without."""
    from PIL import Image
    Image.new("RGB", (320, 200), (90, 120, 160)).save(tmp_path / "frame.jpg")
    refined = run_cli("detect", "frame.jpg", "--model", "gtsdb", cwd=tmp_path)
    plain = run_cli("detect", "frame.jpg", "--model", "gtsdb", "--no-refine", cwd=tmp_path)
    assert refined.returncode == plain.returncode == 0, (refined.stderr, plain.stderr)
    assert "refined by onnxruntime" in refined.stderr and "refined" not in plain.stderr
    assert json.loads(refined.stdout)["path"] == "frame.jpg"


def test_the_box_reported_is_the_one_with_the_higher_coco_ap_on_validation():
    """Two true signs: the detector's boxes on them exactly, the namer's shifted (IoU 0.68 and 0.82):
    the detector's win on naming AP and on finding AP; the other way round the namer's."""
    rows = [{**_row("a", [10, 10, 50, 50], 0.9), "box": [14, 10, 54, 50], "detector_box": [10, 10, 50, 50]},
            {**_row("a", [100, 20, 140, 60], 0.8, class_id=1), "box": [100, 26, 140, 66], "detector_box": [100, 20, 140, 60]}]
    truth = _truth()[lambda t: t["frame"] == "a"]
    box, ap = choose_box(truth, rows, scored=True)
    assert box == "detector" and ap["detector"] == pytest.approx(1.0) and ap["namer"] < 0.7
    assert choose_box(truth, rows, scored=False)[0] == "detector"
    swapped = [{**r, "box": r["detector_box"], "detector_box": r["box"]} for r in rows]
    assert choose_box(truth, swapped, scored=True)[0] == "namer"


def test_a_detection_the_crop_model_does_not_recognise_is_dropped(tmp_path):
    """Under `min_probability` the crop model's answer means "not a sign it knows": the frame's record
    leaves the detection out (the probability is the stub model's own, whatever it is)."""
    from tsloc.serving.detect import record

    def two(frame, min_score, vote_iou=0.0):
        return np.array([[50.0, 20.0, 90.0, 60.0], [120.0, 30.0, 150.0, 60.0]]), np.array([0.8, 0.6])
    namer = load_backend(stub_model(tmp_path / "m.pt"))
    found = Finder(two, namer)(np.zeros((100, 200, 3), np.uint8))
    p = found[0]["probability"]
    assert len(found) == 2 and 0 < p < 1
    names = [f"c{i}" for i in range(10)]
    frame = np.zeros((100, 200, 3), np.uint8)
    assert len(record(None, frame, found, names, min_probability=p / 2)["detections"]) == 2
    assert record(None, frame, found, names, min_probability=min(1.0, p + 1e-3))["detections"] == []


def test_every_sign_gets_a_window_that_holds_it():
    rng = np.random.default_rng(0)
    boxes = [np.array([[10, 10, 40, 40], [600, 300, 700, 420]], np.float32), np.zeros((0, 4), np.float32)]
    sizes = [(800, 480), (800, 480)]
    plan = window_plan(boxes, sizes, 320, 0.25, 0.0, rng)
    assert len(plan) == 3 and sum(i == 1 for i, *_ in plan) <= 1  # two signs, a quarter of background
    for i, scale, left, top in plan:
        frame = np.zeros((480, 800, 3), np.uint8)
        image, inside = cut_window(frame, boxes[i], scale, left, top, 320)
        assert image.shape == (3, 320, 320)
        if i == 0:
            assert len(inside) >= 1 and (inside >= 0).all() and (inside <= 320).all()


def test_hard_negative_windows_replace_a_share_of_the_background_ones():
    """The same number of windows with hard negatives as without (the schedule's steps stay); the
    share asked of the background windows holds a mined false find; none asked, or none mined: the
    plan of a run without them, window for window."""
    boxes = [np.array([[10, 10, 40, 40]], np.float32)] * 9 + [np.zeros((0, 4), np.float32)]
    sizes = [(800, 480)] * 10
    negatives = [np.zeros((0, 4), np.float32)] * 9 + [np.array([[700, 400, 760, 440]], np.float32)]
    plain = window_plan(boxes, sizes, 320, 0.5, 0.1, np.random.default_rng(3))
    assert window_plan(boxes, sizes, 320, 0.5, 0.1, np.random.default_rng(3), None, 0.5) == plain
    assert window_plan(boxes, sizes, 320, 0.5, 0.1, np.random.default_rng(3), [np.zeros((0, 4))] * 10, 0.5) == plain
    hard = window_plan(boxes, sizes, 320, 0.5, 0.1, np.random.default_rng(3), negatives, 0.5)
    assert len(hard) == len(plain) == 18
    holding = [w for w in hard if w[0] == 9 and len(cut_window(np.zeros((480, 800, 3), np.uint8), negatives[9], w[1], w[2],
                                                                w[3], 320)[1]) == 1]
    assert len(holding) >= 4  # 9 background windows, half of them (5, rounded) around the mined box
    assert len(window_plan(boxes, sizes, 320, 0.5, 0.1, np.random.default_rng(3), negatives, 1.0)) == 18


def test_windows_are_the_same_whoever_cuts_them():
    """The training batches cut by threads (`detector.workers`) are those the loop cuts itself, draw for
    draw: mirrored, lit and boxed alike, in order."""
    from tsloc.params import DetectorParams
    from tsloc.scenes.loop import batches, window_threads
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [np.array([[10, 10, 40, 40]], np.float32), np.array([[150, 60, 190, 100]], np.float32), np.zeros((0, 4), np.float32)]
    plan = window_plan(boxes, [(200, 120)] * 3, 64, 0.5, 0.2, np.random.default_rng(1))
    d = DetectorParams(window=64, batch_size=3)
    cut = {w: list(batches(plan, frames, boxes, d, np.random.default_rng(2), w)) for w in (0, 3)}
    assert window_threads("auto", "cpu") == 0 and window_threads(3, "cpu") == 3 and window_threads("auto", "cuda") >= 1
    assert [len(b) for b in cut[0]] == [3, 1] and len(plan) == 4
    for one, many in zip(cut[0], cut[3]):
        for (image, b), (image2, b2) in zip(one, many):
            assert torch.equal(image, image2) and torch.equal(b, b2)
    flat = [w for b in cut[0] for w in b]
    assert not torch.equal(flat[0][0], flat[1][0]) and all(0 <= w[0].min() and w[0].max() <= 1 for w in flat)


class _FixedFinds(torch.nn.Module):
    """Stands in for FCOS in eval mode: the same finds on every frame, above its score threshold, best
    score first (as FCOS answers)."""
    score_thresh = 0.05

    def forward(self, images):
        boxes = torch.tensor([[10, 10, 50, 50], [150, 60, 190, 95], [12, 10, 52, 50], [100, 20, 140, 60]], dtype=torch.float32)
        scores = torch.tensor([0.9, 0.6, 0.3, 0.15])
        keep = scores >= self.score_thresh
        return [{"boxes": boxes[keep], "scores": scores[keep]} for _ in images]


def test_hard_negatives_are_confident_finds_where_no_sign_is():
    from tsloc.scenes.loop import mine_negatives
    model = _FixedFinds()
    frames = [np.zeros((100, 200, 3), np.uint8)] * 2
    truth = [np.array([[10, 10, 50, 50]], np.float32), np.zeros((0, 4), np.float32)]
    found = mine_negatives(model, frames, truth, "cpu", min_score=0.2, per_frame=5)
    # frame 0: the sign and its near copy are not negatives, 0.15 is below the score; frame 1 has no sign
    assert found[0].tolist() == [[150, 60, 190, 95]]
    assert found[1].tolist() == [[10, 10, 50, 50], [150, 60, 190, 95], [12, 10, 52, 50]]
    assert mine_negatives(model, frames, truth, "cpu", min_score=0.2, per_frame=1)[1].tolist() == [[10, 10, 50, 50]]
    assert model.training and model.score_thresh == 0.05  # left as training found it


def test_cut_window_clips_drops_and_flips():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[10:30, 10:30] = 255
    boxes = np.array([[10, 10, 30, 30], [45, 0, 65, 20], [58, 50, 78, 70]], np.float32)
    image, inside = cut_window(frame, boxes, 1.0, 0, 0, 64)
    # the second is whole; the third is 6 of 20 columns inside: dropped
    assert inside.tolist() == [[10, 10, 30, 30], [45, 0, 64, 20]]
    assert image[:, 10:30, 10:30].min() == 1.0 and image[:, 40:, 40:].max() == 0.0
    mirrored, flipped = cut_window(frame, boxes, 1.0, 0, 0, 64, flip=True)
    assert flipped.tolist()[0] == [34, 10, 54, 30] and torch.equal(mirrored, image.flip(-1))
    half, scaled = cut_window(frame, boxes[:1], 0.5, 0, 0, 64)
    assert scaled.tolist() == [[5, 5, 15, 15]]


def test_the_detector_keeps_the_frame_size_and_freezes_what_it_says():
    model = det.build_detector("none", frozen_blocks=4).eval()
    trunk = model.backbone.body
    assert not any(p.requires_grad for i in range(4) for p in trunk[str(i)].parameters())
    assert all(p.requires_grad for p in trunk["13"].parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        out = model([torch.rand(3, 150, 230)])[0]
    assert out["boxes"].shape[1] == 4
    images, _ = model.transform([torch.rand(3, 150, 230)])
    assert images.image_sizes == [(150, 230)]  # not resized: a 16-px sign stays 16 px


def test_a_detector_file_round_trips_and_a_bad_one_is_named(tmp_path):
    model = det.build_detector("none", fpn_channels=32, head_convs=1)
    det.save(tmp_path / "d.pt", model, {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4}, window=320)
    again, ckpt = det.load(tmp_path / "d.pt")
    assert ckpt["window"] == 320 and all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    (tmp_path / "bad.pt").write_bytes(b"not a detector")
    from tsloc.errors import ModelFileError
    with pytest.raises(ModelFileError, match="bad.pt: not a compatible tsloc detector"):
        det.load(tmp_path / "bad.pt")


def test_no_box_distance_starts_dead():
    """torchvision's regression head ends in a ReLU: a fresh detector's four distances are positive in
    every cell, so each gets gradients (one stuck at 0 left a detector unable to draw boxes)."""
    model = det.build_detector("imagenet", seed=0).eval()
    reg = model.head.regression_head
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 160, 224)])
        pre = [reg.bbox_reg(reg.conv(f)) for f in model.backbone(images.tensors).values()]
    assert all(bool((p > 0).all()) for p in pre)


def test_folding_the_frozen_blocks_keeps_the_function_and_older_files_load(tmp_path):
    plain = det.build_detector("imagenet", fold_frozen=False, seed=0).eval()
    folded = det.build_detector("imagenet", seed=0).eval()
    assert len(folded.state_dict()) < len(plain.state_dict())  # no BatchNorm left in blocks 0-3
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        a, b = plain.backbone(x), folded.backbone(x)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    # a file written before folding: no fold_frozen in its config
    torch.save({"state_dict": plain.state_dict(), "config": {"frozen_blocks": 4}}, tmp_path / "old.pt")
    again, _ = det.load(tmp_path / "old.pt")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in plain.state_dict().items())


def test_detect_on_files(tmp_path):
    """`tsloc detect` on two frames and a broken file: one JSON line per readable frame with its size,
    the broken file named, exit 1; --draw writes the frames; csv has a header and a row per frame."""
    from PIL import Image
    det.save(tmp_path / "d.pt", det.build_detector("none", fpn_channels=32, head_convs=1),
             {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4})
    stub_model(tmp_path / "m.pt")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (120, 80), (90, 120, 160)).save(frames / "a.jpg")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(frames / "b.png")
    (frames / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["detect", frames, "--detector", tmp_path / "d.pt", "--model", tmp_path / "m.pt", "--device", "cpu"]
    proc = run_cli(*args, "--draw", tmp_path / "drawn", cwd=tmp_path)
    assert proc.returncode == 1 and "c.png: unreadable image" in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["width"], r["height"]) for r in records] == [(120, 80), (64, 48)]
    assert all(set(r) == {"path", "width", "height", "detections"} for r in records)
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png"]
    proc = run_cli(*args[:-2], "--device", "cpu", "--format", "csv", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("path,width,height,left,top,right,bottom,score,class_id,class,probability")
    assert len(lines) == 3
    bad = run_cli(*args, "--min-score", "2", cwd=tmp_path)
    assert bad.returncode == 2 and "--min-score must be from 0 to 1, not 2.0" in bad.stderr


def _lively(model):
    """A random detector whose scores spread (freshly built, every cell scores about 0.07: all ties)."""
    torch.manual_seed(0)
    head = model.head
    for conv in (head.classification_head.cls_logits, head.regression_head.bbox_ctrness, head.regression_head.bbox_reg):
        torch.nn.init.normal_(conv.weight, std=0.3)
        torch.nn.init.zeros_(conv.bias)
    return model.eval()


def test_numpy_nms_keeps_what_torchvision_keeps():
    from torchvision.ops import nms as tv_nms
    from tsloc.scenes.decode import nms
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (300, 2))], 1).astype(np.float32)
    boxes[:20, 2:] = boxes[:20, :2]  # empty boxes (0 / 0 overlap) as a head with zero distances gives
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    for iou in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, iou).tolist() == tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).tolist()


def test_decoding_the_heads_outputs_gives_torchvisions_detections():
    """The graph the ONNX file holds (pixels to per-cell scores and distances) and the NumPy decoding
    after it give what torchvision's FCOS gives, on a frame whose sides are not multiples of 32."""
    from tsloc.scenes.decode import decode
    from tsloc.scenes.export import DetectorGraph
    model = _lively(det.build_detector("none", fpn_channels=32, head_convs=1, seed=0))  # the same random detector every run
    frame = np.random.default_rng(1).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    boxes, scores = det.TorchDetector(model, {})(frame)
    with torch.no_grad():
        cells, distances = DetectorGraph(model)(torch.from_numpy(frame))
    mine, my_scores = decode(cells.numpy(), distances.numpy(), 150, 230, det.STRIDES, score_thresh=model.score_thresh,
                             topk=model.topk_candidates, nms_thresh=model.nms_thresh,
                             max_detections=model.detections_per_img)
    assert 10 <= len(boxes) == len(mine) and np.allclose(my_scores, scores, atol=1e-5)
    assert np.abs(mine - boxes).max() < 1e-2
    # an operating point applied before NMS (fewer candidates: faster) keeps exactly the detections over it
    cut = float(np.median(my_scores))
    high, high_scores = decode(cells.numpy(), distances.numpy(), 150, 230, det.STRIDES, score_thresh=cut,
                               topk=model.topk_candidates, nms_thresh=model.nms_thresh, max_detections=50)
    assert np.array_equal(high, mine[my_scores > cut]) and np.array_equal(high_scores, my_scores[my_scores > cut])
    # box voting: in both, the same detections and scores; only boxes move, alike
    voted, voted_scores = det.TorchDetector(model, {})(frame, 0.0, 0.3)
    my_voted, my_voted_scores = decode(cells.numpy(), distances.numpy(), 150, 230, det.STRIDES,
                                       score_thresh=model.score_thresh, topk=model.topk_candidates,
                                       nms_thresh=model.nms_thresh, max_detections=model.detections_per_img, vote_iou=0.3)
    assert np.array_equal(voted_scores, scores) and np.array_equal(my_voted_scores, my_scores)
    assert np.abs(my_voted - voted).max() < 1e-2  # (this random head's boxes barely overlap: the trained one moves them, slow)
    assert model.nms_thresh == 0.5 and model.detections_per_img == 50  # left as they were


def test_box_voting_by_hand():
    """A kept box becomes the score-weighted mean of the candidates overlapping it at the IoU asked
    (itself among them); one with none but itself stays."""
    from tsloc.scenes.decode import vote
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)  # IoU of the first two: 8 / 12
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    kept = boxes[[0, 2]]
    assert np.allclose(vote(kept, boxes, scores, 0.6), [[0.5, 0, 10.5, 10], [50, 50, 60, 60]])
    assert np.allclose(vote(kept, boxes, scores, 0.7), kept)


@pytest.fixture(scope="module")
def onnx_detector(tmp_path_factory):
    """A random detector with spread scores and its ONNX export (about half a minute: marked slow)."""
    from tsloc.scenes.export import export_detector
    model = _lively(det.build_detector("none", fpn_channels=32, head_convs=1, seed=0))  # the same random detector every run
    path = tmp_path_factory.mktemp("onnx") / "detector.onnx"
    return model, export_detector(model, {"config": {"fpn_channels": 32}, "strides": list(det.STRIDES)}, path)


@pytest.fixture(scope="module")
def onnx_crop_model(tmp_path_factory):
    """The stub crop model as ONNX (its class 3 everywhere)."""
    from tsloc.crops.checkpoint import load as load_ckpt
    from tsloc.crops.export import export as export_crop
    folder = tmp_path_factory.mktemp("crop")
    return export_crop(*load_ckpt(stub_model(folder / "m.pt")), "onnx", folder / "model.onnx")


@pytest.mark.slow
def test_the_onnx_detector_finds_what_pytorch_finds(onnx_detector, onnx_crop_model):
    """The exported file (dynamic frame size) through ONNX Runtime against torchvision's FCOS on two
    frame sizes, within the export stage's parity; its metadata names it a detector, and a crop model
    given as the detector (or the detector as the crop model) is one message."""
    from tsloc.serving.backend import load_detector
    from tsloc.errors import ModelFileError
    from tsloc.pipeline.detector_export import PARITY, agreement
    model, path = onnx_detector
    torch_det = det.TorchDetector(model, {})
    onnx_det = load_detector(path)
    assert onnx_det.meta["kind"] == "detector" and onnx_det.meta["config"] == {"fpn_channels": 32}
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((150, 230), (96, 64))]
    parity = agreement([onnx_det(f) for f in frames], [torch_det(f) for f in frames])
    assert parity["frames_differing"] == 0 and parity["max_box_difference"] <= PARITY["max_box_difference"], parity
    assert parity["max_score_difference"] <= PARITY["max_score_difference"], parity
    with pytest.raises(ModelFileError, match="detector.onnx: a tsloc detector, not a crop model"):
        load_backend(path)
    with pytest.raises(ModelFileError, match="model.onnx: a tsloc crop model, not a detector"):
        load_detector(onnx_crop_model)


@pytest.mark.slow
def test_detect_with_onnx_files_runs_without_torch(tmp_path, onnx_detector, onnx_crop_model):
    """The pipeline's default files in a folder (models/detector.onnx, models/model.onnx): `tsloc detect`
    picks them, says so, and answers in a process where importing torch or torchvision fails."""
    import shutil
    import subprocess
    import sys
    from PIL import Image
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(onnx_detector[1], models / "detector.onnx")
    shutil.copy(onnx_crop_model, models / "model.onnx")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 140, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    code = ("import sys; sys.modules['torch'] = sys.modules['torchvision'] = None\n"
            "from tsloc.cli import main\nsys.exit(main(['detect', 'f.png', '--min-probability', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "detector models/detector.onnx (onnxruntime fp32), namer models/model.onnx (onnxruntime fp32)" in proc.stderr
    record = json.loads(proc.stdout)
    assert (record["width"], record["height"]) == (140, 90) and record["detections"], record
    assert all(d["class_id"] == 3 for d in record["detections"])  # the stub crop model's answer


def test_parity_allows_a_rare_near_tie_but_not_a_drift():
    """One box of 100 kept differently by NMS (a near tie) passes; boxes that drift, or another
    count of detections, or another AP50, fail."""
    from tsloc.pipeline.detector_export import agreement, agrees
    corners = 100.0 * np.stack([np.arange(100) % 10, np.arange(100) // 10], 1)  # signs 100 px apart
    boxes = np.hstack([corners, corners + 20])
    scores = np.random.default_rng(0).uniform(0.2, 1, 100)
    reference = [(boxes, scores)]
    tie = boxes.copy()
    tie[7] += [0, 0, 24, 24]
    assert agrees(agreement([(tie, scores)], reference), 0.0)
    last = boxes.copy()  # the 50th-best kept: another candidate far away, its score a little lower
    last[99] = [1500, 900, 1520, 920]
    lower = scores.copy()
    lower[99] -= 0.009
    assert agrees(agreement([(last, lower)], reference), 0.0)
    assert not agrees(agreement([(boxes, scores + 0.002)], reference), 0.0)  # scores drift
    drift = boxes + 0.8
    assert not agrees(agreement([(drift, scores)], reference), 0.0)
    assert not agrees(agreement([(boxes[:-1], scores[:-1])], reference), 0.0)
    assert not agrees(agreement([(boxes, scores)], reference), 0.01)


@pytest.mark.slow  # trains the detector for a few epochs on synthetic scenes (about a minute)
def test_the_detector_learns_to_find_synthetic_signs(tmp_path):
    from tsloc.params import DetectorParams
    from tsloc.scenes import manifest, synthetic
    from tsloc.data.frames import FrameFiles, decode_frames
    from tsloc.scenes.loop import evaluate as evaluate_on, fit_detector
    data = manifest.read(synthetic.generate(tmp_path, frames=24, seed=2, width=320, height=240)).table
    paths = list(dict.fromkeys(data["frame"]))
    signs = data[data["class_id"] >= 0]
    boxes = [signs.loc[signs["frame"] == p, ["left", "top", "right", "bottom"]].to_numpy(np.float32) for p in paths]
    frames = decode_frames(paths)
    model = det.build_detector("imagenet", seed=0)
    before = evaluate_on(model, data, FrameFiles(paths), "cpu", None)["ap50"]
    rows = []
    sizes = [(f.shape[1], f.shape[0]) for f in frames]
    d = DetectorParams(window=160, epochs=4, batch_size=8, lr=0.002, hard_negatives=0.5)
    fit_detector(model, frames, boxes, sizes, d, device=torch.device("cpu"), log=lambda e, row: rows.append(row))
    after = evaluate_on(model, data, FrameFiles(paths), "cpu", None)["ap50"]
    assert rows[-1]["loss"] < rows[0]["loss"] and after > max(0.3, before + 0.2), (before, after, rows)
    assert rows[1]["hard_negatives"] == 0 and rows[2]["hard_negatives"] == rows[3]["hard_negatives"]  # mined before epoch 3

    # box voting on a trained detector moves boxes, and the ONNX file's decoding votes alike
    from tsloc.scenes.decode import decode
    from tsloc.scenes.export import DetectorGraph
    kept, _ = det.TorchDetector(model, {})(frames[0])
    voted, _ = det.TorchDetector(model, {})(frames[0], 0.0, 0.6)
    with torch.no_grad():
        cells, distances = DetectorGraph(model.eval())(torch.from_numpy(frames[0]))
    h, w = frames[0].shape[:2]
    mine, _ = decode(cells.numpy(), distances.numpy(), h, w, det.STRIDES, score_thresh=model.score_thresh,
                     topk=model.topk_candidates, nms_thresh=model.nms_thresh, max_detections=model.detections_per_img,
                     vote_iou=0.6)
    assert len(voted) == len(kept) == len(mine) and np.abs(mine - voted).max() < 0.05
    assert np.abs(voted - kept).max(1).max() > 0.1, "no box moved"

    # Stopped during epoch 4, after the negatives were mined: the resumed run ends where this one did,
    # its windows cut by two threads this time (the same windows: the same weights)
    import dataclasses

    from tsloc.resume import Resume
    d = dataclasses.replace(d, workers=2)

    def stop_at_4(epoch, row):
        if epoch == 4:
            raise KeyboardInterrupt
    resume = Resume(tmp_path / "detector.pt", "key")
    again = det.build_detector("imagenet", seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit_detector(again, frames, boxes, sizes, d, device=torch.device("cpu"), log=stop_at_4, resume=resume)
    again = det.build_detector("imagenet", seed=0)
    last = fit_detector(again, frames, boxes, sizes, d, device=torch.device("cpu"), resume=Resume(resume.path, "key"))
    assert last == rows[-1]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_refiner_of_several_members_is_their_ensemble_from_consecutive_seeds():
    """refiner.members: 2 trains the refiner of refiner.members 1 (the same weights: its seed) and one more
    from the next seed; the checkpoint holds both."""
    import torch
    import dataclasses
    from conftest import tiny_data
    from tsloc.crops.model import Ensemble
    from tsloc.params import RefinerParams
    from tsloc.pipeline.refiner_train import train_refiner
    images, labels, boxes = tiny_data(n=24, size=48)
    data = {"train": (images[:16], labels[:16], boxes[:16]), "valid": (images[16:], labels[16:], boxes[16:])}
    r = RefinerParams(steps=3, image_size=48, batch_size=8, seed=5, device="cpu")
    one, one_ckpt, _, _ = train_refiner(data, ["a", "b", "c"], r, weights="none")
    two, two_ckpt, _, _ = train_refiner(data, ["a", "b", "c"], dataclasses.replace(r, members=2), weights="none")
    assert isinstance(two, Ensemble) and two_ckpt["members"] == 2 and "members" not in one_ckpt
    first, second = two.members
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in one.state_dict().items())
    assert not torch.equal(first.box[-1].weight, second.box[-1].weight)
