"""Stage `refiner_train`: the second stage that tightens each box the detector finds. The crop branch's
network (the best recipe's: MobileNetV2, its last 8 blocks fine-tuned, the spatial box head) trained on
the training frames' signs, each cut with `refiner.context` of real context around it and re-framed at
random in every epoch (re-crop augmentation on every crop: the sign is never where it was cut), so its
box head learns where a sign's edges are in a loosely framed crop; scored on the validation frames'
signs cut with `refiner.margin` around a box moved as the detector's are (each edge by up to 10% of the
sign's size), against that box. Writes models/refiner.pt and models/refiner.onnx (its fp32 export
checked against PyTorch, then static int8 where that refines within MAX_INT8_LOSS of fp32, else the
fp32 file), which tsloc.serving.backend.load_detector puts behind the detector beside them where
it tightens those boxes (the files' `tightens`)."""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..boxes import paired_iou
from ..crops import checkpoint
from ..crops.augment import settings as augment_settings
from ..crops.batches import Batches, images_source
from ..crops.export import export
from ..crops.inference import TorchBackend
from ..crops.loop import fit
from ..crops.model import Ensemble, build_model
from ..data.frames import BOX, NO_SIGN, decode_frame, load_scene_table
from ..data.images import to_input
from ..device import select_device
from ..errors import ExportError
from ..io import write_json
from ..params import AugmentParams, TrainParams
from ..paths import REFINER, REFINER_METRICS, REFINER_ONNX, REFINER_REPORT, SCENE_CLASSES, SCENE_SPLIT
from ..quantize import quantize_int8
from ..serving.backend import load_backend
from ..serving.namer import crop_windows, name
from . import record_keys, tracked_params

JITTER = 0.1  # validation: each edge of a true box moved by up to this share of the sign's size, as found boxes are off
CALIBRATION = 512  # training signs the int8 ranges are calibrated on (at most)
MAX_INT8_LOSS = 0.005  # models/refiner.onnx is the int8 file where it refines within this mean IoU of fp32, else fp32


def sign_crops(signs: pd.DataFrame, context: float, size: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Each sign cut from its frame with `context` of its size per side (clipped to the frame) and squashed
    to `size` (as the namer's crops are): uint8 (N, size, size, 3), class ids, the box relative to its crop."""
    images, labels, boxes = [], [], []
    for frame, rows in signs.groupby("frame", sort=False):
        pixels = decode_frame(frame)
        b = rows[BOX].to_numpy(np.float64)
        windows = crop_windows(b, pixels.shape[1], pixels.shape[0], context)
        image = Image.fromarray(pixels)
        for box, win in zip(b, windows):
            images.append(to_input(image.crop(tuple(int(v) for v in win)), size))
            boxes.append((box - np.r_[win[:2], win[:2]]) / np.r_[win[2:] - win[:2], win[2:] - win[:2]])
        labels += rows["class_id"].astype(int).tolist()
    return np.stack(images), torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(np.array(boxes), dtype=torch.float32)


def moved_box_iou(refiner, signs: pd.DataFrame, margin: float, seed: int) -> dict:
    """Mean IoU with the true boxes of the validation signs' boxes moved (each edge by up to JITTER of
    the sign's size), before and after the refiner."""
    rng = np.random.default_rng(seed)
    before, after = [], []
    for frame, rows in signs.groupby("frame", sort=False):
        pixels = decode_frame(frame)
        true = rows[BOX].to_numpy(np.float32)
        sizes = np.tile(true[:, 2:] - true[:, :2], 2)  # (w, h, w, h) of each sign
        moved = true + rng.uniform(-JITTER, JITTER, true.shape).astype(np.float32) * sizes
        refined = name(refiner, pixels, moved, margin)[1]
        before += paired_iou(torch.as_tensor(moved), torch.as_tensor(true)).tolist()
        after += paired_iou(torch.as_tensor(refined, dtype=torch.float32), torch.as_tensor(true)).tolist()
    return {"signs": len(before), "moved_box_iou": float(np.mean(before)), "refined_iou": float(np.mean(after))}


def train_member(data: dict, classes: list[str], r, seed: int, weights: str = "imagenet", device="cpu") -> tuple:
    """One refiner trained on `data` ({"train", "valid"}: `sign_crops` of each) for `r.steps` steps (the
    refiner.* params, tsloc.params.RefinerParams) from `seed`: (the model on the CPU, in eval mode; the
    epoch it was kept at; the epochs that made the steps)."""
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", weights, len(classes), image_size=r.image_size, trainable_blocks=8,
                        box="spatial")
    augment = AugmentParams(enabled=True, recrop=1.0)  # every crop re-framed
    n = len(data["train"][0])
    per_epoch = max(n // r.batch_size + (1 if n % r.batch_size >= 2 else 0), 1)  # as the loop steps (tsloc.crops.loop)
    epochs = math.ceil(r.steps / per_epoch)  # a step count, not epochs: few signs need more of them
    train = TrainParams(epochs=epochs, eval_every=epochs, batch_size=r.batch_size, seed=seed, device=r.device,
                        optimizer="adamw", lr=r.lr, backbone_lr=0.5, weight_decay=1e-4, schedule="cosine",
                        warmup_epochs=1, label_smoothing=0.1, box_loss="l1+giou", loss_balance="fixed",
                        loss_weight=r.loss_weight, class_weights="sqrt", box_weights="none", keep="last", augment=augment)
    aug = augment_settings(augment)
    generator = torch.Generator().manual_seed(seed)
    subsets = {"train": Batches(images_source(data["train"][0], data["train"][2], device, aug, generator),
                                *data["train"][1:]),
               "valid": Batches(images_source(data["valid"][0], data["valid"][2], device), *data["valid"][1:])}
    kept = fit(model.to(device), subsets, train, image_size=r.image_size, progress=True)
    model.load_state_dict(kept["state"])
    return model.cpu().eval(), kept["epoch"], epochs


def train_refiner(data: dict, classes: list[str], r, weights: str = "imagenet", device="cpu") -> tuple:
    """The refiner: `r.members` of them (`train_member`, seeds r.seed, r.seed + 1, ...), an Ensemble
    where more than one: (the model on the CPU, in eval mode; its checkpoint's contents, with `r.margin`
    as its crops' margin; the epochs that made the steps; minutes)."""
    started = time.perf_counter()
    members = [train_member(data, classes, r, r.seed + k, weights, device) for k in range(r.members)]
    minutes = (time.perf_counter() - started) / 60
    model = members[0][0] if r.members == 1 else Ensemble([m for m, _, _ in members]).eval()
    ckpt = checkpoint.make(model, model.state_dict(), backbone="mobilenet_v2", image_size=r.image_size,
                           class_names=classes, epoch=members[0][1], loss_weight=r.loss_weight, crop_margin=r.margin,
                           kind="refiner")
    return model, ckpt, members[0][2], minutes


def run(params_file: str = "params.yaml") -> dict:
    p = tracked_params(params_file)
    r = p.refiner
    split = load_scene_table(SCENE_SPLIT)
    signs = split[split["class_id"] != NO_SIGN]
    data = {s: sign_crops(signs[signs["subset"] == s], r.context, r.image_size) for s in ("train", "valid")}
    classes = pd.read_csv(SCENE_CLASSES, keep_default_na=False)["name"].tolist()
    device = select_device(r.device)
    model, ckpt, epochs, minutes = train_refiner(data, classes, r, p.detector.weights, device)
    ckpt["refiner"] = r.as_dict()  # how it was trained, in the file
    valid = signs[signs["subset"] == "valid"]
    scores = {"pytorch": moved_box_iou(TorchBackend(model, ckpt), valid, r.margin, r.seed)}
    # used behind the detector only where it tightens the validation signs' moved boxes (a refiner of few
    # steps or signs can loosen them: load_detector then leaves the detector's boxes as they are)
    ckpt["tightens"] = bool(scores["pytorch"]["refined_iou"] > scores["pytorch"]["moved_box_iou"])
    with tempfile.TemporaryDirectory(prefix=".refiner.", dir=REFINER.parent) as scratch:
        fp32 = export(model, ckpt, "onnx", Path(scratch) / "fp32.onnx")
        scores["onnx_fp32"] = moved_box_iou(load_backend(fp32), valid, r.margin, r.seed)
        if abs(scores["pytorch"]["refined_iou"] - scores["onnx_fp32"]["refined_iou"]) > 1e-3:
            raise ExportError(f"{REFINER_ONNX}: the ONNX refiner does not answer as PyTorch does on the validation signs "
                              f"(mean IoU {scores['onnx_fp32']['refined_iou']:.4f} against "
                              f"{scores['pytorch']['refined_iou']:.4f}); nothing written")
        # int8 (faster on a CPU) calibrated on training signs cut as found boxes are: with the refiner's margin
        calibration = sign_crops(signs[signs["subset"] == "train"], r.margin, r.image_size)[0]
        int8 = quantize_int8(fp32, Path(scratch) / "int8.onnx", calibration[:CALIBRATION], float_convs=3, seed=r.seed)
        scores["onnx_int8"] = moved_box_iou(load_backend(int8), valid, r.margin, r.seed)
        int8_holds = scores["onnx_fp32"]["refined_iou"] - scores["onnx_int8"]["refined_iou"] <= MAX_INT8_LOSS
        checkpoint.save(REFINER, ckpt)  # both files only once every check passed
        os.replace(int8 if int8_holds else fp32, REFINER_ONNX)
    report = {"valid": scores["pytorch"], "onnx_fp32": scores["onnx_fp32"], "onnx_int8": scores["onnx_int8"],
              "onnx": "int8" if int8_holds else "fp32",
              "tightens": ckpt["tightens"], "train_signs": len(data["train"][0]), "epochs": epochs,
              "train_minutes": round(minutes, 2), "device": str(device)}
    write_json(REFINER_REPORT, report)
    write_json(REFINER_METRICS, {"valid": {k: scores["pytorch"][k] for k in ("moved_box_iou", "refined_iou")},
                                 "train_minutes": report["train_minutes"]})
    record_keys("refiner_train", p)
    return report
