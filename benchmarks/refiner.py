"""Would a second stage tighten the detector's boxes? (issue 35: finding's COCO AP over IoU 0.5:0.95.)
Trains a crop model on the scene split's training signs, each cut from its frame with real context
around it (`--context` of the sign per side) and re-framed at random during training (the crop
branch's network and re-crop augmentation: `tsloc.pipeline.refiner_train.train_refiner`), then lets its box head replace
each detector box, cut with `--margins` around it; scores finding AP at each IoU threshold, with and
without, on the validation frames (which choose the margin) and then on the test frames.

    python benchmarks/refiner.py --split data/scenes/split.csv --detector models/detector.onnx
    # GTSDB: the German command's split and the ready pair's detector (docs/scenes.md, "Where COCO's AP is lost")
    python benchmarks/refiner.py --split SPLIT.csv --detector src/tsloc/serving/models/gtsdb.detector.onnx
    # is the input size the limit? one refiner per size, side by side
    python benchmarks/refiner.py --split SPLIT.csv --detector ... --size 112 144 192
    # or the training's length? one refiner per step count (and the mean of their boxes: an ensemble)
    python benchmarks/refiner.py --split SPLIT.csv --detector ... --steps 1000 2000 3000
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np

from tsloc.crops.inference import TorchBackend
from tsloc.data.frames import NO_SIGN, decode_frame, load_scene_table
from tsloc.params import RefinerParams
from tsloc.pipeline.refiner_train import sign_crops, train_refiner  # the stage this experiment became
from tsloc.scenes.evaluation import evaluate
from tsloc.serving.backend import load_detector
from tsloc.serving.namer import name


def label(variant) -> str:
    return "the mean of their boxes" if variant == "mean" else f"{variant[0]} px, {variant[1]} steps"


def refined(refiners: dict, variant, frame: str, pixels, boxes, margin: float, memo: dict) -> np.ndarray:
    """One refiner's boxes for a frame's found boxes, or ("mean") the mean of all refiners' boxes; each
    refiner runs once per frame and margin (`memo`)."""
    def one(key):
        if (key, frame, margin) not in memo:
            memo[key, frame, margin] = name(refiners[key], pixels, boxes, margin)[1]
        return memo[key, frame, margin]
    return np.mean([one(k) for k in refiners], axis=0) if variant == "mean" else one(variant)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="data/scenes/split.csv", help="a scene split (scenes_split's table)")
    ap.add_argument("--detector", default="models/detector.onnx")
    ap.add_argument("--size", type=int, nargs="+", default=[144], help="the refiner's input size (several: "
                    "one refiner each, side by side)")
    ap.add_argument("--context", type=float, default=0.5, help="real context cut around each training sign")
    ap.add_argument("--steps", type=int, nargs="+", default=[1000], help="refiner.steps: training steps (several: "
                    "one refiner each)")
    ap.add_argument("--loss-weight", type=float, default=20.0, help="train.loss_weight: the box loss over it")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.15, 0.2, 0.25], help="inference crops' margins")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    split = load_scene_table(args.split)
    signs = split[split["class_id"] != NO_SIGN]
    classes = [str(c) for c in range(int(signs["class_id"].max()) + 1)]
    refiners, crops = {}, {}  # (size, steps) -> the refiner; size -> its training and validation crops
    for size, steps in itertools.product(args.size, args.steps):
        if size not in crops:
            crops[size] = {s: sign_crops(signs[signs["subset"] == s], args.context, size) for s in ("train", "valid")}
        data = crops[size]
        r = RefinerParams(steps=steps, image_size=size, context=args.context, loss_weight=args.loss_weight,
                          seed=args.seed)
        model, ckpt, epochs, minutes = train_refiner(data, classes, r)  # the stage's training, not a copy of it
        refiners[size, steps] = TorchBackend(model, ckpt)
        print(f"# refiner: {len(data['train'][0])} training signs, {steps} steps ({epochs} epochs) at {size} px, "
              f"{minutes:.1f} min")
    print(f"# detector {args.detector}")
    detector = load_detector(args.detector, refine=False)  # its own boxes, not those of a refiner beside it
    chosen = {}  # each variant's margin, chosen on the validation frames
    for subset in ("valid", "test"):
        truth = split[split["subset"] == subset]
        found, memo = {}, {}
        for frame in dict.fromkeys(truth["frame"]):
            pixels = decode_frame(frame)
            boxes, scores = detector(pixels, 0.05)
            found[frame] = (pixels, boxes, scores)
        rows = {None: [{"frame": f, "box": list(map(float, b)), "score": float(s)}
                       for f, (_, bs, ss) in found.items() for b, s in zip(bs, ss)]}  # the detector's own boxes
        for variant in list(refiners) + (["mean"] if len(refiners) > 1 else []):
            for margin in args.margins if subset == "valid" else [chosen[variant]]:
                rows[variant, margin] = [
                    {"frame": f, "box": list(map(float, r)), "score": float(s)} for f, (px, bs, ss) in found.items()
                    if len(bs) for r, s in zip(refined(refiners, variant, f, px, bs, margin, memo), ss)]
        results = {key: evaluate(truth, dets) for key, dets in rows.items()}
        if subset == "valid":
            for variant in {key[0] for key in rows if key is not None}:
                chosen[variant] = max(args.margins, key=lambda m: results[variant, m]["ap"])
        print(f"{subset}: AP 0.5:0.95 | AP at IoU 0.50 0.55 ... 0.95")
        for key, e in results.items():
            kind = ("detector" if key is None else f"refined, {label(key[0])}, margin {key[1]}")
            print(f"  {kind:50s} {e['ap']:.3f} | " + " ".join(f"{a:.3f}" for a in e["ap_per_iou"]))


if __name__ == "__main__":
    main()
