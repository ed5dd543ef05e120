"""Would a second stage tighten the detector's boxes? (issue 35: finding's COCO AP over IoU 0.5:0.95.)
Trains a crop model on the scene split's training signs, each cut from its frame with real context
around it (`--context` of the sign per side) and re-framed at random during training (the crop
branch's `fit` and re-crop augmentation, the best recipe's network), then lets its box head replace
each detector box, cut with `--margins` around it; scores finding AP at each IoU threshold, with and
without, on the validation frames (which choose the margin) and then on the test frames.

    python benchmarks/refiner.py --split data/scenes/split.csv --detector models/detector.onnx
    # GTSDB: the German command's split and the ready pair's detector (docs/scenes.md, "Where COCO's AP is lost")
    python benchmarks/refiner.py --split SPLIT.csv --detector src/tsloc/serving/models/gtsdb.detector.onnx
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import pandas as pd
import torch
from pycocotools.cocoeval import COCOeval

from tsloc.crops import checkpoint
from tsloc.crops.batches import Batches, images_source
from tsloc.crops.inference import TorchBackend
from tsloc.crops.loop import fit
from tsloc.crops.model import build_model
from tsloc.data.frames import NO_SIGN, decode_frame, load_scene_table
from tsloc.params import AugmentParams, TrainParams
from tsloc.pipeline.refiner_train import sign_crops  # the stage this experiment became
from tsloc.scenes.evaluation import _coco
from tsloc.serving.backend import load_detector
from tsloc.serving.namer import name


def ap_per_iou(truth: pd.DataFrame, detections: list[dict]) -> tuple[float, list[float]]:
    """Finding's COCO AP over IoU 0.5:0.95 and at each of its ten thresholds."""
    gt, dt = _coco(truth, detections, lambda class_id: 1)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.maxDets = [1, 10, 100]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, 0, 0, 2]
    return float(ev.stats[0]), [float(np.mean(p[p > -1])) for p in precision]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="data/scenes/split.csv", help="a scene split (scenes_split's table)")
    ap.add_argument("--detector", default="models/detector.onnx")
    ap.add_argument("--size", type=int, default=144, help="the refiner's input size")
    ap.add_argument("--context", type=float, default=0.5, help="real context cut around each training sign")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--loss-weight", type=float, default=20.0, help="train.loss_weight: the box loss over it")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.15, 0.2, 0.25], help="inference crops' margins")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    split = load_scene_table(args.split)
    signs = split[split["class_id"] != NO_SIGN]
    started = time.perf_counter()
    data = {s: sign_crops(signs[signs["subset"] == s], args.context, args.size) for s in ("train", "valid")}
    classes = int(signs["class_id"].max()) + 1
    torch.manual_seed(args.seed)
    model = build_model("mobilenet_v2", "imagenet", classes, image_size=args.size, trainable_blocks=8, box="spatial")
    augment = AugmentParams(enabled=True, recrop=1.0)  # every crop re-framed: the box is never where it was cut
    params = TrainParams(epochs=args.epochs, eval_every=args.epochs, seed=args.seed, optimizer="adamw", lr=0.002,
                         backbone_lr=0.5, weight_decay=1e-4, schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
                         box_loss="l1+giou", loss_balance="fixed", loss_weight=args.loss_weight, class_weights="sqrt",
                         box_weights="none", keep="last", augment=augment)
    aug = {k: getattr(augment, k) for k in ("margin", "rotation", "color", "blur", "recrop")}
    gen = torch.Generator().manual_seed(args.seed)
    subsets = {"train": Batches(images_source(data["train"][0], data["train"][2], "cpu", aug, gen), *data["train"][1:]),
               "valid": Batches(images_source(data["valid"][0], data["valid"][2], "cpu"), *data["valid"][1:])}
    kept = fit(model, subsets, params, image_size=args.size, progress=True)
    model.load_state_dict(kept["state"])
    meta = checkpoint.make(model, kept["state"], backbone="mobilenet_v2", image_size=args.size,
                           class_names=[str(c) for c in range(classes)], epoch=kept["epoch"], loss_weight=args.loss_weight)
    refiner = TorchBackend(model.eval(), meta)
    print(f"# refiner: {len(data['train'][0])} training signs, {args.epochs} epochs at {args.size} px, "
          f"{(time.perf_counter() - started) / 60:.1f} min; detector {args.detector}")
    detector = load_detector(args.detector, refine=False)  # its own boxes, not those of a refiner beside it
    chosen = None
    for subset in ("valid", "test"):
        truth = split[split["subset"] == subset]
        found = {}
        for frame in dict.fromkeys(truth["frame"]):
            pixels = decode_frame(frame)
            boxes, scores = detector(pixels, 0.05)
            found[frame] = (pixels, boxes, scores)
        rows = {"detector": [{"frame": f, "box": list(map(float, b)), "score": float(s)}
                             for f, (_, bs, ss) in found.items() for b, s in zip(bs, ss)]}
        for margin in args.margins if subset == "valid" else [chosen]:
            rows[f"refined, margin {margin}"] = [
                {"frame": f, "box": list(map(float, r)), "score": float(s)} for f, (px, bs, ss) in found.items()
                if len(bs) for r, s in zip(name(refiner, px, bs, margin)[1], ss)]
        results = {kind: ap_per_iou(truth, dets) for kind, dets in rows.items()}
        if subset == "valid":
            best = max((k for k in results if k != "detector"), key=lambda k: results[k][0])
            chosen = float(best.rsplit(" ", 1)[1])
        print(f"{subset}: AP 0.5:0.95 | AP at IoU 0.50 0.55 ... 0.95")
        for kind, (coco_ap, per) in results.items():
            print(f"  {kind:22s} {coco_ap:.3f} | " + " ".join(f"{a:.3f}" for a in per))


if __name__ == "__main__":
    main()
