"""The GPU path's pieces as device-agnostic code, tested on the CPU (precision, the device's noise
draw, the store placement), and on CUDA where it exists (skipped elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tsloc.crops.augment import augment, photometric
from tsloc.boxes import make_valid
from tsloc.errors import DataError
from tsloc.crops.model import SignNet, build_model
from tsloc.crops.batches import Batches, features_source, images_source, place_store
from tsloc.crops.loop import fit
from tsloc.params import TrainParams
from tsloc.crops.runtime import Runtime, resolve_precision

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_precision_auto_is_fp32_on_every_device_and_fp16_needs_cuda(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # measured faster for this network (runtime)
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(DataError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    assert not torch.is_autocast_enabled("cpu")
    with Runtime(cpu, "bf16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with Runtime(cpu, "fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_on_the_cpu_under_the_portable_kernel_cap_is_refused_with_the_way_out(monkeypatch):
    """The stages cap oneDNN at AVX2 (tsloc.numerics); there bf16 convolutions fall back to PyTorch's
    reference kernels, about 20x slower than fp32: refused before training starts, naming the switch."""
    cpu = torch.device("cpu")
    for isa in ("AVX2", "avx2", "AVX"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        with pytest.raises(DataError, match=f"capped at ONEDNN_MAX_CPU_ISA={isa} .*TSLOC_CPU_KERNELS=native"):
            resolve_precision("bf16", cpu)
        assert resolve_precision("fp32", cpu) == "fp32"
        assert resolve_precision("bf16", torch.device("cuda")) == "bf16"  # the cap is the CPU's only
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert resolve_precision("bf16", cpu) == "bf16"


def _features(n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = torch.as_tensor(rng.integers(0, 3, n))
    centres = rng.normal(size=(3, 32)).astype(np.float32)
    feats = centres[labels.numpy()] + 0.5 * rng.normal(size=(n, 32)).astype(np.float32)
    boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (n, 4)), dtype=torch.float32))
    return {"train": Batches(features_source(feats[:30], boxes[:30], "cpu"), labels[:30], boxes[:30]),
            "valid": Batches(features_source(feats[30:], boxes[30:], "cpu"), labels[30:], boxes[30:])}


def test_bf16_mixed_precision_trains_like_fp32_on_the_cpu():
    """The precision handling is the same code on every device: bf16 autocast on the CPU learns the
    same easy problem to about the same loss as fp32 (bf16 keeps 8 bits of mantissa)."""
    subsets, ends = _features(), {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 32, num_classes=3, dropout=0.0)
        history = []
        fit(net, subsets, TrainParams(epochs=6, batch_size=8, seed=0), image_size=48,
            rt=Runtime(torch.device("cpu"), precision), log=lambda e, row, _: history.append(row))
        ends[precision] = history[-1]["valid"]
        assert all(np.isfinite(r["train"]["loss"]) for r in history)
    assert ends["bf16"]["loss"] == pytest.approx(ends["fp32"]["loss"], rel=0.05), ends
    assert abs(ends["bf16"]["accuracy"] - ends["fp32"]["accuracy"]) <= 0.1, ends


def test_noise_drawn_on_the_device_has_the_cpu_noise_distribution():
    """Off the CPU the image-sized noise is drawn where the images are (from a seed of the CPU
    generator); its distribution is the CPU draw's: grey images, colour and blur off, the spread
    that the noise adds is the same either way."""
    x = torch.full((256, 3, 32, 32), 0.5)
    spreads = {}
    for device_noise in (False, True):
        out = photometric(x.clone(), 0.0, 0.0, torch.Generator().manual_seed(1), device_noise=device_noise)
        spreads[device_noise] = (out - 0.5).std().item(), (out - 0.5).mean().item()
    (cpu_std, cpu_mean), (dev_std, dev_mean) = spreads[False], spreads[True]
    assert dev_std == pytest.approx(cpu_std, rel=0.05) and abs(dev_mean) < 1e-3 and abs(cpu_mean) < 1e-3
    again = photometric(x.clone(), 0.0, 0.0, torch.Generator().manual_seed(1), device_noise=True)
    assert torch.equal(again, photometric(x.clone(), 0.0, 0.0, torch.Generator().manual_seed(1), device_noise=True))


def test_the_store_stays_put_on_the_cpu():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    store = place_store(images, "cpu")
    assert store.device.type == "cpu" and not store.is_pinned() and store.dtype == torch.uint8


# PyTorch's meta device fails as CUDA does when a CPU tensor meets one of its own in an op ("Tensor on device
# cpu is not on the expected device meta"): the code that builds from CPU statistics into a model that lives
# elsewhere is checked on the CPU with it (the train stage's first crash on a GPU was such a spot).

def test_the_mean_box_from_the_cpu_starts_a_box_head_on_another_device():
    net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64, box="spatial").to("meta")
    net.start_boxes_at(torch.tensor([0.1, 0.2, 0.6, 0.9], dtype=torch.float64))  # the box statistics: CPU
    assert net.box[-1].bias.device.type == "meta" and net.box[-1].bias.dtype == torch.float32


def test_inference_folds_its_layers_where_the_model_is():
    """TorchBackend's Predictor folds the normalisation and the box pooling into new layers built from
    CPU constants: on a model that lives on another device they are built there."""
    from tsloc.crops.inference import Predictor
    net = build_model("mobilenet_v2", "none", num_classes=3, image_size=144, box="spatial").to("meta")
    folded = Predictor(net)
    assert {t.device.type for t in [*folded.parameters(), *folded.buffers()]} == {"meta"}
    probs, boxes = folded(torch.zeros(2, 144, 144, 3, dtype=torch.uint8, device="meta"))
    assert probs.shape == (2, 3) and boxes.shape == (2, 4)


def test_the_objective_moves_its_class_weights_and_balance_with_it():
    from tsloc.crops.losses import Objective, class_weights
    net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64)
    weights = class_weights(np.array([0, 1, 1, 2]), 3)  # computed on the CPU, as fit does
    objective = Objective(net, weights, weights, image_size=64).to("meta")
    y, target = torch.zeros(4, dtype=torch.int64, device="meta"), torch.zeros(4, 4, device="meta")
    loss, logits, boxes = objective(torch.zeros(4, 3, 64, 64, device="meta"), y, target)
    assert loss.device.type == "meta" and logits.shape == (4, 3)


@cuda
def test_cuda_store_and_augmentation_keep_boxes_as_on_the_cpu():
    """The store goes to the GPU when it fits; augmentation there gives the CPU's boxes (the geometry
    is drawn on the CPU) and the CPU's images up to the noise."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 48, 48, 3), dtype=np.uint8)
    boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (16, 4)), dtype=torch.float32))
    store = place_store(images, "cuda")
    assert store.device.type == "cuda"
    kw = {"margin": 0.3, "rotation": 8, "color": 0.0, "blur": 0.0}
    x_cpu, b_cpu = augment(torch.as_tensor(images), boxes, generator=torch.Generator().manual_seed(2), **kw)
    x_gpu, b_gpu = augment(store, boxes, generator=torch.Generator().manual_seed(2), **kw)
    assert x_gpu.device.type == "cuda" and torch.allclose(b_gpu.cpu(), b_cpu)
    assert (x_gpu.cpu() - x_cpu).abs().mean() < 0.05  # the noise differs, the warp does not


@cuda
def test_cuda_fit_with_auto_precision_learns():
    subsets = _features()
    rng = np.random.default_rng(1)
    device = torch.device("cuda")
    images = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    boxes = subsets["train"].boxes
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64, trainable_blocks=2, box="spatial").to(device)
    aug = {"margin": 0.3, "rotation": 5, "color": 0.2, "blur": 0.3}
    labels = torch.cat([subsets["train"].labels, subsets["valid"].labels])
    all_boxes = torch.cat([boxes, subsets["valid"].boxes])
    data = {"train": Batches(images_source(images[:30], all_boxes[:30], device, aug, torch.Generator()), labels[:30],
                             all_boxes[:30]),
            "valid": Batches(images_source(images[30:], all_boxes[30:], device), labels[30:], all_boxes[30:])}
    rt = Runtime(device, resolve_precision("auto", device))
    history = []
    fit(net, data, TrainParams(epochs=2, batch_size=8, seed=0, box_loss="l1+giou", loss_balance="fixed"), image_size=64,
        rt=rt, log=lambda e, row, _: history.append(row))
    assert rt.precision == "fp32" and all(np.isfinite(r["train"]["loss"]) for r in history)


def _random_crops(n: int, classes: int):
    """`n` random uint8 crops of 64 px with valid relative boxes and labels: (images, boxes, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (n, 4)), dtype=torch.float32))
    return images, boxes, torch.as_tensor(rng.integers(0, classes, n))


@cuda
def test_an_interrupted_fit_on_cuda_continues_from_its_saved_state(tmp_path, capsys):
    """The best recipe's training on the GPU (images and augmentation there, fused AdamW, cosine, a moving
    average, dropout) stopped in its third epoch: the state saved from CUDA tensors is read back onto the
    GPU, only the missing epoch runs, and it ends as the uninterrupted run (every random stream restored,
    the GPU's dropout stream too; within the GPU kernels' non-deterministic sums)."""
    from tsloc.resume import Resume
    images, boxes, labels = _random_crops(40, classes=3)
    device = torch.device("cuda")
    aug = {"margin": 0.3, "rotation": 5, "color": 0.2, "blur": 0.3, "recrop": 0.3}

    def run(resume, stop_after=None):
        torch.manual_seed(0)
        net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64, trainable_blocks=2,
                          box="spatial").to(device)
        aug_gen = torch.Generator().manual_seed(1)
        data = {"train": Batches(images_source(images[:30], boxes[:30], device, aug, aug_gen), labels[:30], boxes[:30]),
                "valid": Batches(images_source(images[30:], boxes[30:], device), labels[30:], boxes[30:])}
        history = []

        def log(epoch, row, _):
            history.append((epoch, row))
            if epoch == stop_after:
                raise KeyboardInterrupt  # before this epoch's state is written
        best = fit(net, data, TrainParams(epochs=3, batch_size=8, seed=4, lr=0.01, optimizer="adamw",
                                          schedule="cosine", warmup_epochs=1, eval_every=2, ema_decay=0.9,
                                          box_loss="l1+giou", loss_balance="fixed"),
                   image_size=64, rt=Runtime(device, "fp32"), log=log, aug_generator=aug_gen, resume=resume)
        return best, history

    whole, hist_whole = run(None)
    resume = Resume(tmp_path / "state.pt", "key")
    with pytest.raises(KeyboardInterrupt):
        run(resume, stop_after=3)
    assert resume.epochs_done() == 2
    best, hist = run(Resume(resume.path, "key"))
    assert "continuing after epoch 2 of 3" in capsys.readouterr().err
    assert [e for e, _ in hist] == [3]
    assert hist[0][1]["train"]["loss"] == pytest.approx(hist_whole[2][1]["train"]["loss"], rel=1e-3)
    assert best["epoch"] == whole["epoch"] and best["loss"] == pytest.approx(whole["loss"], rel=1e-3)


def test_a_stage_report_names_gpu_memory_only_on_a_gpu():
    """reports/train.json and detector_train.json gain `gpu_memory_mib` on CUDA; on the CPU nothing (their
    CPU reports stay what they were)."""
    from tsloc.device import peak_memory
    assert peak_memory("cpu") == {} and peak_memory(torch.device("cpu")) == {} and peak_memory("meta") == {}


def test_validation_runs_in_large_batches_on_a_gpu_and_at_the_training_batch_on_the_cpu(monkeypatch):
    """fit's validation passes: on a GPU at least GPU_EVAL_BATCH images a step (the best recipe's 32 leaves the
    GPU waiting for launches), on the CPU at the training batch (its sums, so its figures, unchanged)."""
    from tsloc.crops import loop
    assert loop.eval_batch(torch.device("cuda"), 32) == loop.GPU_EVAL_BATCH == 256
    assert loop.eval_batch(torch.device("cuda", 1), 1024) == 1024 and loop.eval_batch(torch.device("cpu"), 32) == 32
    seen, evaluate = [], loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda objective, data, batch, rt: seen.append(batch)
                        or evaluate(objective, data, batch, rt))
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 32, num_classes=3, dropout=0.0)
    fit(net, _features(), TrainParams(epochs=2, batch_size=8, seed=0), image_size=48, rt=Runtime(torch.device("cpu")))
    assert seen == [8, 8]


def test_a_training_autotunes_the_gpu_s_kernels_and_puts_the_flags_back():
    """tsloc.device.autotuned, around fit's and the detector's training steps: on a GPU TF32 and cuDNN's
    autotuner while they run, the flags as they were afterwards (even after an error: inference on frames of
    any size must not time kernels for every new one); on the CPU nothing changes."""
    from tsloc.device import autotuned
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = False, False, False
        with autotuned("cpu"):
            assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (False, False, False)
        with pytest.raises(RuntimeError, match="a step failed"):
            with autotuned(torch.device("cuda", 0)):
                assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (True, True, True)
                raise RuntimeError("a step failed")
        assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (False, False, False)
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before


def test_a_step_s_small_tensors_stay_themselves_on_the_cpu():
    """tsloc.device.to_device pins and copies asynchronously only towards a GPU: on the CPU a step's tensors
    are the very same objects as before (CPU results unchanged, benchmarks/training_numerics.py)."""
    from tsloc.device import to_device
    t = torch.arange(5)
    assert to_device(t, "cpu") is t and to_device(t, torch.device("cpu")) is t
    assert to_device(t, "meta").device.type == "meta"


@cuda
def test_a_training_step_on_cuda_never_waits_for_the_host(monkeypatch):
    """The best recipe's step (the store and augmentation on the GPU, the spatial head, L1 + GIoU, cosine
    AdamW, fused) only queues work: under torch.cuda.set_sync_debug_mode("error") any call that makes the
    host wait for the GPU raises, with its place in the traceback. The pass's sums are read once after
    it (Totals.means: left out here)."""
    from tsloc.crops import loop
    from tsloc.crops.losses import Objective
    device = torch.device("cuda")
    images, boxes, labels = _random_crops(64, classes=5)
    aug = {"margin": 0.45, "rotation": 10, "color": 0.3, "blur": 0.3, "recrop": 0.3, "erase": 0.3}
    gen = torch.Generator().manual_seed(0)
    data = Batches(images_source(images, boxes, device, aug, gen), labels, boxes)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", "none", num_classes=5, image_size=64, trainable_blocks=8, box="spatial")
    params = TrainParams(epochs=2, batch_size=16, lr=0.002, optimizer="adamw", schedule="cosine", box_loss="l1+giou",
                         loss_balance="fixed", label_smoothing=0.1)
    objective = Objective(model, torch.ones(5), image_size=64, box_loss="l1+giou", balance="fixed",
                          label_smoothing=0.1).to(device)
    optimizer, scheduler = loop.make_optimizer(objective, params, 4)
    rt = Runtime(device, "fp32")
    loop.train_one_epoch(objective, objective, data, 16, optimizer, rt, scheduler, generator=gen)  # warm-up: allocations
    monkeypatch.setattr(loop.Totals, "means", lambda self, world: self.sums)
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = loop.train_one_epoch(objective, objective, data, 16, optimizer, rt, scheduler, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums).all()


@cuda
def test_a_compiled_step_on_cuda_trains_like_the_eager_one():
    """train.compile on a GPU: torch.compile in mode reduce-overhead (the step replayed as CUDA graphs) trains
    to the eager step's numbers within float reordering (dropout off: compiled, it has its own random stream)."""
    images = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    subsets = _features()
    labels = torch.cat([subsets["train"].labels, subsets["valid"].labels])
    boxes = torch.cat([subsets["train"].boxes, subsets["valid"].boxes])
    device = torch.device("cuda")
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64, trainable_blocks=8, box="spatial",
                          dropout=0.0).to(device)
        data = {"train": Batches(images_source(images[:30], boxes[:30], device), labels[:30], boxes[:30]),
                "valid": Batches(images_source(images[30:], boxes[30:], device), labels[30:], boxes[30:])}
        history = []
        fit(net, data, TrainParams(epochs=3, batch_size=10, seed=0, box_loss="l1+giou", loss_balance="fixed",
                                   compile=compiled), image_size=64, rt=Runtime(device, "fp32"),
            log=lambda e, row, _: history.append(row))
        runs.append(history)
    for eager, compiled in zip(*runs):
        assert compiled["valid"]["loss"] == pytest.approx(eager["valid"]["loss"], rel=1e-2)


# --- The pipeline itself on CUDA: every stage of dvc.yaml, run as DVC runs them (their `cmd`, in order; no
# DVC needed on the GPU machine), on tiny data, with the recipe of the default (frozen features), the best
# recipe's training path (images on the device, augmentation, fine-tuned blocks) and the small recipe's
# network from scratch (convnet); the outputs then load on the CPU.

TINY = {"data.synthetic.size": 250, "data.image_size": 64, "train.epochs": 2, "scenes.synthetic.frames": 40,
        "detector.epochs": 2, "detector_export.calibration_frames": 8, "refiner.steps": 8, "refiner.image_size": 64,
        "refiner.device": "cuda", "train.device": "cuda", "detector.device": "cuda"}


def _params(dst, recipe: str | None, more: dict | None = None) -> None:
    """params.yaml in `dst` as `dvc exp run -S recipe=RECIPE -S key=value ...` composes it (Hydra, through
    DVC's own function), with TINY's and `more`'s values."""
    from conftest import compose
    overrides = {**TINY, **(more or {})}
    compose(dst / "params.yaml", dst / "conf", [*([f"recipe={recipe}"] if recipe else []),
                                                *(f"{k}={v}" for k, v in overrides.items())])


def _stages(dst, only=None) -> None:
    """Each stage's `cmd` from dvc.yaml, in the file's order (a topological one), in `dst`. Without PyAV (the
    GPU check, .ci/gpu, does not carry it) the drive's stages are left out: they decode video and run ONNX
    on the CPU, nothing of them on the GPU."""
    import importlib.util
    import subprocess
    import sys

    import yaml
    video = importlib.util.find_spec("av") is not None
    for name, stage in yaml.safe_load((dst / "dvc.yaml").read_text())["stages"].items():
        if (only and name not in only) or (not video and name.startswith("drive_")):
            continue
        cmd = stage["cmd"].replace("python ", f"{sys.executable} ", 1)
        proc = subprocess.run(cmd, shell=True, cwd=dst, capture_output=True, text=True)
        assert proc.returncode == 0, f"stage {name} failed on CUDA ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_the_pipeline_tests_copy_the_tree_without_a_git_program(monkeypatch):
    """The lent GPU machines may have no git program: there the pipeline tests list the working tree
    through dulwich (DVC's Git library) in the repository .ci/gpu made, as git lists it."""
    import shutil

    import conftest
    if shutil.which("git") is None:
        pytest.skip("git not installed: nothing to compare with")
    by_git = sorted(filter(None, conftest.worktree_files()))
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "git" else which(name, *a, **k))
    assert sorted(filter(None, conftest.worktree_files())) == by_git and "dvc.yaml" in by_git


@cuda
@pytest.mark.parametrize("recipe", [None, "best", "small"])
def test_every_stage_runs_on_cuda_and_its_outputs_load_on_the_cpu(tmp_path, recipe):
    import json

    from conftest import copy_worktree
    from tsloc.crops import checkpoint
    from tsloc.serving.backend import load_backend, load_detector
    copy_worktree(tmp_path)
    _params(tmp_path, recipe)
    _stages(tmp_path)
    train = json.loads((tmp_path / "reports" / "train.json").read_text())
    detector = json.loads((tmp_path / "reports" / "detector_train.json").read_text())
    device = TINY["train.device"]
    assert train["device"].startswith(device) and detector["device"].startswith(device), (train, detector)
    assert train["gpu_memory_mib"] > 0 and detector["gpu_memory_mib"] > 0, (train, detector)  # docs/scaling.md's figures
    # What the GPU wrote loads and answers on the CPU: the checkpoint, its ONNX exports, the detector.
    model, ckpt = checkpoint.load(tmp_path / "models" / "model.pt")
    assert all(v.device.type == "cpu" for v in model.state_dict().values())
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    answers = [load_backend(tmp_path / "models" / name, "cpu")(images) for name in ("model.pt", "model.onnx")]
    assert np.allclose(answers[0][0], answers[1][0], atol=1e-3)
    on_gpu = load_backend(tmp_path / "models" / "model.pt", "cuda")  # its batches padded to few sizes: GpuBatches
    assert type(on_gpu).__name__ == "GpuBatches"
    for n in (1, 3, 4):
        assert np.allclose(on_gpu(images[:n])[0], answers[0][0][:n], atol=1e-3)
    det = load_detector(tmp_path / "models" / "detector.pt", "cpu")
    boxes, scores = det(np.zeros((96, 128, 3), np.uint8))
    assert boxes.shape[1:] == (4,) and len(boxes) == len(scores)
    scenes = json.loads((tmp_path / "metrics" / "scenes.json").read_text())["test"]
    assert 0.0 <= scenes["find_ap50"] <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_train_in_two_nccl_ranks_on_cuda(tmp_path):
    import json

    from conftest import copy_worktree
    copy_worktree(tmp_path)
    _params(tmp_path, "best", {"train.processes": 2})
    _stages(tmp_path, only={"ingest", "split", "features", "train"})
    train = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert train["processes"] == 2 and train["device"].startswith("cuda"), train


@cuda
def test_the_server_on_cuda_answers_as_the_api_does_on_the_cpu(tmp_path):
    """`tsloc serve --device cuda`: /v1/predict for requests batched together and /v1/detect (the detector and
    its namer on the GPU, the namer's batches made up to few sizes) answer as tsloc.load does on the CPU."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    import tsloc
    from conftest import png_bytes, stub_model
    from tsloc.scenes import model as det
    from tsloc.serving.serve import ServeConfig, create_app
    model = stub_model(tmp_path / "m.pt")
    det.save(tmp_path / "d.pt", det.build_detector("none", fpn_channels=32, head_convs=1, seed=0),
             {"fpn_channels": 32, "head_convs": 1, "frozen_blocks": 4})
    pngs = [png_bytes(120 + 8 * k, 80, seed=k) for k in range(6)]
    on_cpu = tsloc.load(model, detector=tmp_path / "d.pt", device="cpu")
    config = ServeConfig(model=str(model), detector=str(tmp_path / "d.pt"), device="cuda", min_score=0.0,
                         detect_min_probability=0.0, max_wait_ms=50)
    post = lambda client, path, png: client.post(path, content=png, headers={"content-type": "image/png"})  # noqa: E731
    with TestClient(create_app(config)) as client:
        with ThreadPoolExecutor(6) as pool:
            named = list(pool.map(lambda png: post(client, "/v1/predict", png), pngs))
        found = post(client, "/v1/detect", pngs[0])
        assert "cuda" in json.dumps(client.get("/v1/model").json()), client.get("/v1/model").json()
    for png, answer in zip(pngs, named):
        expected = on_cpu.predict(png)
        assert answer.status_code == 200 and answer.json()["class_id"] == expected["class_id"]
        assert np.allclose(answer.json()["box"], expected["box"], atol=0.5)
    expected = on_cpu.detect(pngs[0], min_score=0.0, min_probability=0.0)["detections"]
    got = found.json()["detections"]
    assert found.status_code == 200 and abs(len(got) - len(expected)) <= 1  # a score at the threshold may flip
    if expected and got:
        assert np.allclose(got[0]["box"], expected[0]["box"], atol=1.0) and got[0]["class_id"] == expected[0]["class_id"]
