"""ONNX exports (fp32 and int8) and ONNX Runtime as a predict and evaluate backend: the same answers as
the PyTorch model, a file that describes itself, and clear errors. One export per module (about 15 s)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_cli
from conftest import STUB_BOX as BOX, STUB_NAMES as NAMES, random_model, reference_answers, stub_model as _stub
from tsloc.errors import ModelFileError
from tsloc.serving.backend import load_backend
from tsloc.crops.inference import TorchBackend
from tsloc.serving.backend import OnnxBackend


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random model with non-trivial heads (spatial box head), its checkpoint and its fp32 ONNX file."""
    from tsloc.crops.export import export
    root = tmp_path_factory.mktemp("export")
    model, ckpt = random_model(root, box="spatial")
    return model, ckpt, export(model, ckpt, "onnx", root / "model.onnx")


def test_an_export_names_no_path_of_this_checkout(exported):
    """torch.onnx.export notes each node's stack trace, with this checkout's absolute paths; set_meta drops
    them, so the same model exported from another clone is the same file to DVC (dvc.lock's md5)."""
    import tsloc
    data = exported[2].read_bytes()
    assert str(Path(tsloc.__file__).parents[1]).encode() not in data and b"pkg.torch.onnx.stack_trace" not in data


def test_onnx_gives_the_pytorch_answers(exported):
    """fp32 ONNX against the PyTorch model on 200 images: the same class for every one (the required
    share is 99.9%), boxes and probabilities within 1e-5 (required: 1e-3 of the image's size)."""
    model, ckpt, path = exported
    x = torch.randint(0, 256, (200, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    probs, boxes = OnnxBackend(path)(x.numpy())
    ref_p, ref_b = reference_answers(model, ckpt, x)
    assert (probs.argmax(1) == ref_p.argmax(1).numpy()).mean() >= 0.999
    assert np.abs(boxes - ref_b.numpy()).max() <= 1e-5 and np.abs(probs - ref_p.numpy()).max() <= 1e-5
    assert probs.shape == (200, len(NAMES)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    one_p, one_b = OnnxBackend(path)(x[:1].numpy())  # batch 1 too (the batch axis is dynamic)
    assert np.allclose(one_p, probs[:1], atol=1e-5) and np.allclose(one_b, boxes[:1], atol=1e-5)


def test_onnx_on_the_cpu_runs_in_chunks_with_the_same_answers(exported, monkeypatch):
    """A call of 20 images runs as 8 + 8 + 4 (OnnxBackend.CPU_CHUNK) and answers as one whole call."""
    _, _, path = exported
    x = np.random.default_rng(2).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    backend = OnnxBackend(path)
    sizes, run = [], backend.session.run
    monkeypatch.setattr(backend.session, "run", lambda out, feed: sizes.append(len(feed["images"])) or run(out, feed),
                        raising=False)
    probs, boxes = backend(x)
    whole_p, whole_b = run(None, {"images": x})
    assert sizes == [8, 8, 4] and probs.shape == whole_p.shape and boxes.shape == whole_b.shape
    assert np.allclose(probs, whole_p, atol=1e-6) and np.allclose(boxes, whole_b, atol=1e-6)
    assert [a.shape for a in backend(x[:0])] == [(0, len(NAMES)), (0, 4)]  # no images: no run, the outputs' shapes


def test_onnx_sessions_do_not_spin_their_threads_after_a_run(exported, monkeypatch):
    """tsloc's sessions leave the cores to the next model and to Python between runs (tsloc.onnxfile.SPIN:
    ONNX Runtime's default spinning halved tsloc detect's frames a second on 2 cores); SPIN restores it."""
    from tsloc import onnxfile
    key = "session.intra_op.allow_spinning"
    assert onnxfile.session(exported[2]).get_session_options().get_session_config_entry(key) == "0"
    monkeypatch.setattr(onnxfile, "SPIN", True)
    assert onnxfile.session(exported[2]).get_session_options().get_session_config_entry(key) == "1"


def test_onnx_describes_itself(exported):
    """What the .pt carries except the weights: a user never needs the checkpoint beside the export."""
    from tsloc.onnxfile import read_meta
    _, ckpt, path = exported
    meta = read_meta(path)
    assert {k: v for k, v in meta.items() if k != "export"} == json.loads(json.dumps(
        {k: v for k, v in ckpt.items() if k != "state_dict"}))
    assert meta["class_names"] == NAMES and meta["class_ids"] == list(range(len(NAMES)))
    assert meta["image_size"] == 64 and meta["mean"] == ckpt["mean"] and meta["std"] == ckpt["std"]
    assert meta["export"]["precision"] == "fp32" and "uint8 RGB (N, S, S, 3)" in meta["export"]["input"]
    assert "left, top, right, bottom" in meta["export"]["outputs"]


def test_predict_on_onnx_alone_gives_the_pt_records(exported, tmp_path):
    """`tsloc predict --model model.onnx` in a folder without the .pt: the records of the .pt model."""
    model, ckpt, path = exported
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(path, alone / "signs.onnx")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (64, 64), (120, 90), (33, 70)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    torch.save({**ckpt, "state_dict": model.state_dict()}, tmp_path / "m.pt")
    runs = {m: run_cli("predict", tmp_path, "--model", m, "--top-k", "3", "--batch-size", "3")
            for m in (alone / "signs.onnx", tmp_path / "m.pt")}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    onnx_rec, pt_rec = ([json.loads(line) for line in r.stdout.splitlines()] for r in runs.values())
    assert len(onnx_rec) == len(pt_rec) == 4
    for a, b in zip(onnx_rec, pt_rec):
        assert (a["path"], a["class_id"], a["class_name"]) == (b["path"], b["class_id"], b["class_name"])
        assert [t["class_id"] for t in a["top_k"]] == [t["class_id"] for t in b["top_k"]]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        assert a["box"] == pytest.approx(b["box"], abs=0.011)  # pixels, rounded to 0.01


def test_broken_and_foreign_onnx_files_are_one_clear_error(exported, tmp_path, capsys):
    import onnx
    _, _, path = exported
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match=r"truncated.onnx: not an ONNX file"):
        load_backend(truncated)
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(ModelFileError, match=r"foreign.onnx: an ONNX file, but not a tsloc export"):
        load_backend(foreign)
    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    for bad in (truncated, foreign, tmp_path / "missing.onnx", tmp_path / "model.h5"):
        proc = run_cli("predict", tmp_path / "x.png", "--model", bad)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"tsloc predict: error: {bad}:"), proc.stderr


def _workspace(root, model_path, n=60, size=64):
    """The files the export stage reads: a split, an image store, a model, params."""
    (root / "data" / "features").mkdir(parents=True)
    (root / "models").mkdir()
    shutil.copy(model_path, root / "models" / "model.pt")
    rng = np.random.default_rng(0)
    np.save(root / "data" / "features" / "images.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    subsets = np.array(["train", "valid", "test"])[np.arange(n) % 3]
    pd.DataFrame({"path": [f"img{i}.png" for i in range(n)], "class_id": np.arange(n) % 5, "width": 100,
                  "height": 80, "left": 10, "top": 10, "right": 60, "bottom": 70, "subset": subsets}) \
        .to_csv(root / "data" / "split.csv", index=False)
    (root / "params.yaml").write_text("export:\n  calibration_images: 8\n  seed: 3\n")
    return root


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """The export stage run on the stub model (its heads ignore the image: class 3, then 0, 1, ...; BOX)."""
    root = _workspace(tmp_path_factory.mktemp("stage"), _stub(tmp_path_factory.mktemp("stub") / "stub.pt"))
    proc = run_cli("export", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.slow  # an export and a quantization (about 20 s)
def test_export_stage_writes_both_files_and_their_scores(stage):
    report = json.loads((stage / "reports" / "export.json").read_text())["test"]
    assert set(report) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert report["onnx_fp32"]["against_pytorch"]["same_class"] == 1.0
    assert report["onnx_fp32"]["accuracy"] == report["pytorch"]["accuracy"] and report["pytorch"]["images"] == 20
    scored = run_cli("evaluate", "--model", "models/model.int8.onnx", cwd=stage)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["test"]["accuracy"] == report["onnx_int8"]["accuracy"]
    assert json.loads(scored.stdout)["backend"] == "onnxruntime int8"
    assert sorted(p.name for p in (stage / "models").iterdir()) == ["model.int8.onnx", "model.onnx", "model.pt"]


@pytest.mark.slow
def test_int8_keeps_a_clear_answer_and_says_how_it_was_made(stage):
    """int8 must keep the stub's answer; the file is about a quarter of the fp32 one and records its
    calibration (export.calibration_images of the training rows, export.seed)."""
    from tsloc.onnxfile import read_meta
    fp32, int8 = stage / "models" / "model.onnx", stage / "models" / "model.int8.onnx"
    meta = read_meta(int8)["export"]
    assert meta["precision"] == "int8" and meta["calibration_images"] == 8 and meta["calibration_seed"] == 3
    assert {"Softmax", "Concat", "Min", "Max"} <= set(meta["float_ops"])  # the outputs' last steps stay float
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    assert "reduce_range" in meta["quantization"]
    x = np.random.default_rng(1).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    probs, boxes = load_backend(int8)(x)
    assert (probs.argmax(1) == 3).all() and (np.argsort(-probs, 1)[:, 1] == 0).all()
    assert np.abs(boxes - np.array(BOX)).max() < 0.01


@pytest.mark.slow
def test_int8_keeps_the_first_convolutions_and_the_input_float(stage):
    """export.float_convs (default 3) convolutions stay float, and so does the input's padding before
    them: the first activation quantized comes after them, and their weights are float tensors."""
    import onnx
    graph = onnx.load(str(stage / "models" / "model.int8.onnx")).graph
    float_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [i for i, n in enumerate(graph.node) if n.op_type == "Conv"]
    first_quantize = next(i for i, n in enumerate(graph.node) if n.op_type == "QuantizeLinear")
    assert first_quantize > convs[2]
    assert all(graph.node[i].input[1] in float_weights for i in convs[:3])
    assert not any(graph.node[i].input[1] in float_weights for i in convs[3:])


@pytest.mark.slow
def test_int8_weights_cannot_saturate_on_a_cpu_without_vnni(stage):
    """Every int8 weight tensor is 7-bit (quantize.WEIGHT_RANGE): on x86 without VNNI, ONNX Runtime adds
    pairs of uint8 x int8 products in 16 bits, and only 7-bit weights keep that exact, so the file
    answers the same on every CPU. The old 8-bit files fail this (weights out to -127 and 127: 53 tensors of the old ready model)."""
    import onnx
    from onnx import numpy_helper

    from tsloc.quantize import saturating_weights
    int8 = stage / "models" / "model.int8.onnx"
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(t).size > 1]
    assert weights and saturating_weights(int8) == []
    assert max(int(np.abs(w).max()) for w in weights) >= 60  # the range is used, not collapsed


def test_an_export_that_disagrees_writes_nothing(tmp_path, monkeypatch, exported):
    """An ONNX file that does not answer as models/model.pt does (here: another model's, put in place of
    the export): one message, exit 2, no model file, no report, no temporary file."""
    import tsloc.pipeline.export as stage_module
    _workspace(tmp_path, _stub(tmp_path / "stub.pt"))
    other = exported[2]
    monkeypatch.setattr(stage_module, "export", lambda model, ckpt, fmt, out: shutil.copy(other, out) and out)
    monkeypatch.setattr(stage_module, "quantize_int8", lambda fp32, out, *a, **k: shutil.copy(other, out) and out)
    proc = run_cli("export", cwd=tmp_path)
    assert proc.returncode == 2 and "models/model.onnx: the ONNX export does not give the PyTorch model's" \
        in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt"]
    assert not (tmp_path / "reports").exists()


def test_one_off_export_options(tmp_path):
    stub = _stub(tmp_path / "stub.pt")
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = run_cli("export", "--model", stub, "--format", "pt2", "--quantize", "int8", cwd=tmp_path)
    assert proc.returncode == 2 and "--quantize int8 is for ONNX files" in proc.stderr
    proc = run_cli("export", "--model", stub, "--quantize", "int8", cwd=tmp_path)  # no pipeline here to calibrate on
    assert proc.returncode == 2 and "data/split.csv: not found (run the split stage first" in proc.stderr
    assert not (tmp_path / "stub.int8.onnx").exists()


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18", "convnet"])
def test_the_normalisation_folded_into_the_first_convolution_changes_nothing(backbone):
    """Predictor's first convolution takes raw 0..255 RGB (weights scaled, the mean in the bias, the
    input padded with the mean colour): the answers of normalising and then
    running the trained network, at the border too (flat black and flat white images, where the
    padding matters most), and the trained model is left as it was."""
    import copy
    from tsloc.crops.inference import Predictor
    from tsloc.weights import IMAGENET_MEAN, IMAGENET_STD
    from tsloc.crops.model import build_model
    torch.manual_seed(0)
    net = build_model(backbone, "none", len(NAMES), image_size=64, box="spatial").eval()
    bn = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():  # a BatchNorm that does something, as a trained one does
        bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.normal_(1, 0.2), bn.bias.normal_(0, 0.2)
    before = copy.deepcopy(net.state_dict())
    x = torch.cat([torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8),
                   torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)])
    folded = Predictor(net)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = x.permute(0, 3, 1, 2).float()
    with torch.no_grad():
        probs, boxes = folded(x)
        # the first two blocks' feature maps (the stem convolution and its BatchNorm, and one more), border included
        assert torch.allclose(folded.model.backbone[:2](raw), net.backbone[:2]((raw / 255 - mean) / std), atol=1e-4)
    ref_p, ref_b = reference_answers(net, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, x)
    assert torch.allclose(probs, ref_p, atol=1e-5) and torch.allclose(boxes, ref_b, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("size, folded", [(144, True), (64, False)])
def test_the_box_pooling_folded_into_its_convolution_changes_nothing(size, folded):
    """At 144 px MobileNetV2's 5 x 5 feature map pools to the spatial head's 4 x 4 in alike windows
    (2, stride 1): pooling and the 1x1 convolution become one 2x2 convolution, with the same answers.
    At 64 px (2 x 2 to 4 x 4: windows that repeat cells) the adaptive pooling stays."""
    from tsloc.crops.inference import Predictor
    from tsloc.weights import IMAGENET_MEAN, IMAGENET_STD
    from tsloc.crops.model import build_model
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", len(NAMES), image_size=size, box="spatial").eval()
    for m in net.modules():  # BatchNorm statistics of random images: else a random network's features are ~0
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats(), setattr(m, "momentum", None)
    with torch.no_grad():
        net.backbone.train(), net.box.train()
        net.box[:3](net.backbone(torch.randn(16, 3, size, size)))
        net.eval()
        net.box[-1].weight.normal_(0, 0.2), net.box[-1].bias.copy_(torch.tensor([0.3, 0.3, 0.7, 0.7]) * size)
    predictor = Predictor(net)
    assert isinstance(predictor.model.box[0], torch.nn.Identity) == folded
    x = torch.randint(0, 256, (8, size, size, 3), dtype=torch.uint8)
    with torch.no_grad():
        probs, boxes = predictor(x)
    ref_p, ref_b = reference_answers(net, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, x)
    assert ref_b.std(0).max() > 1e-2  # boxes that differ between images: the head is really tested
    assert torch.allclose(probs, ref_p, atol=1e-5) and torch.allclose(boxes, ref_b, atol=1e-5)


def test_torch_backend_is_the_predictor_module(tmp_path):
    """The .pt backend answers uint8 images as the hand-written reference does (normalisation inside)."""
    from tsloc.crops import checkpoint
    model, ckpt = checkpoint.load(_stub(tmp_path / "stub.pt"))
    x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    probs, boxes = TorchBackend(model, ckpt)(x.numpy())
    ref_p, ref_b = reference_answers(model, ckpt, x)
    assert np.allclose(probs, ref_p.numpy(), atol=1e-6) and np.allclose(boxes, ref_b.numpy(), atol=1e-6)
