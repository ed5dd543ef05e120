"""The training loop's speed on the CPU against an earlier commit's, side by side in one run.

    python benchmarks/loop.py --against cd33afd~1 [--repeats 3] [--images 256 --size 96]

Each repeat times, in fresh processes taking turns, this tree's `fit` (tsloc.crops.loop) and the one at
`--against` (its src/ from `git archive`) on the same synthetic images: the frozen recipe's cached
features (the default pipeline's train stage) and the best recipe's image path (8 blocks fine-tuned,
spatial box head, augmentation). Prints the medians and the ratio new / old. The child supports each
fit API the project has had (see `child`).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trees import src_at

REPO = Path(__file__).resolve().parents[1]


def child(images: int, size: int) -> dict:
    """Time both cases in this process with whichever `fit` API the tree on PYTHONPATH has: tsloc.crops.loop's
    (train.* params, since issue 25), tsloc.training's typed TrainConfig (issue 15), or the one before."""
    import numpy as np
    import torch

    from tsloc.boxes import make_valid
    from tsloc.crops.model import SignNet, build_model
    try:
        from tsloc.crops import batches as T, loop
        from tsloc.params import TrainParams
    except ImportError:
        import tsloc.training as T
        loop = TrainParams = None

    rng = np.random.default_rng(0)
    store = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    labels = torch.as_tensor(rng.integers(0, 62, images))
    boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (images, 4)), dtype=torch.float32))

    def source(net, *a):
        return T.images_source(*a) if "model" not in inspect.signature(T.images_source).parameters else \
            T.images_source(net, *a)

    def run(net, subsets, generator=None, box="l1", balance="learned", keep="best", **kw):
        if loop is not None:
            train = TrainParams(box_loss=box, loss_balance=balance, keep=keep, **kw)
            return loop.fit(net, subsets, train, image_size=size, generator=generator)
        loss_cfg = T.LossConfig(size, box, balance)
        if hasattr(T, "TrainConfig"):
            return T.fit(net, subsets, T.TrainConfig(num_classes=62, loss=loss_cfg, keep=keep, **kw), generator=generator)
        return T.fit(net, subsets, generator=generator, num_classes=62, loss_cfg=loss_cfg, keep=keep, **kw)

    out = {}
    # The default pipeline: heads on cached pooled features, 20 epochs.
    feats = rng.normal(size=(images, 1280)).astype(np.float32)
    torch.manual_seed(0)
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=62)
    n = images * 4 // 5
    subsets = {"train": T.Batches(T.features_source(feats[:n], boxes[:n], "cpu"), labels[:n], boxes[:n]),
               "valid": T.Batches(T.features_source(feats[n:], boxes[n:], "cpu"), labels[n:], boxes[n:])}
    t = time.perf_counter()
    run(net, subsets, epochs=20, batch_size=32, seed=0)
    out["frozen, cached features (20 epochs)"] = time.perf_counter() - t
    # The best recipe's image path, 2 epochs.
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", num_classes=62, image_size=size, trainable_blocks=8, box="spatial")
    g = torch.Generator().manual_seed(0)
    aug = {"margin": 0.45, "rotation": 10, "color": 0.3, "blur": 0.3, "recrop": 0.3}
    subsets = {"train": T.Batches(source(net, store[:n], boxes[:n], "cpu", aug, g), labels[:n], boxes[:n]),
               "valid": T.Batches(source(net, store[n:], boxes[n:], "cpu"), labels[n:], boxes[n:])}
    t = time.perf_counter()
    run(net, subsets, epochs=2, batch_size=32, seed=0, generator=g, box="l1+giou", balance="fixed", keep="last")
    out["fine-tuned, augmented images (2 epochs)"] = time.perf_counter() - t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="cd33afd~1", help="the commit to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.images, args.size)))
        return 0
    with src_at(args.against) as old:
        trees = {"new": REPO / "src", "old": old}
        times: dict[str, dict[str, list]] = {k: {} for k in trees}
        for _ in range(args.repeats):
            for name, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(src)}
                proc = subprocess.run([sys.executable, __file__, "--child", "--images", str(args.images), "--size",
                                       str(args.size)], env=env, capture_output=True, text=True, check=True)
                for case, seconds in json.loads(proc.stdout.splitlines()[-1]).items():
                    times[name].setdefault(case, []).append(seconds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"# training loop, this tree (HEAD {commit}) against {args.against}; {args.images} images at {args.size} px, "
          f"median of {args.repeats} runs each, taking turns")
    for case in times["new"]:
        new, old = statistics.median(times["new"][case]), statistics.median(times["old"][case])
        print(f"{case}: new {new:.2f} s, old {old:.2f} s, new/old {new / old:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
