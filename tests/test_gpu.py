"""The GPU path's pieces as device-agnostic code, tested on the CPU (precision, the device's noise
draw, the store placement), and on CUDA where it exists (skipped elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tsloc.augment import augment, photometric
from tsloc.boxes import make_valid
from tsloc.errors import DataError
from tsloc.model import SignNet, build_model
from tsloc.batches import Batches, features_source, images_source, place_store
from tsloc.loop import fit
from tsloc.params import TrainParams
from tsloc.runtime import Runtime, resolve_precision

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_precision_auto_is_fp32_on_the_cpu_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(DataError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    assert not torch.is_autocast_enabled("cpu")
    with Runtime(cpu, "bf16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with Runtime(cpu, "fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")


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
    assert rt.precision in ("bf16", "fp16") and all(np.isfinite(r["train"]["loss"]) for r in history)
