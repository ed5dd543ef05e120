"""Before and after on this machine: does a commit change what training computes? Runs the best
recipe's training path (8 blocks fine-tuned, spatial head, augmentation, AdamW + cosine, label
smoothing, L1 + GIoU, fixed balance, square-root weights, keep last) for 2 epochs on 96 synthetic
96-px images with this tree and with `--against`'s src/ (from `git archive`), each in a fresh
process, and prints a digest of the kept weights: equal digests, the same numbers.

    python benchmarks/training_numerics.py --against 7ab648e
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

from trees import src_at

REPO = Path(__file__).resolve().parents[1]


def child(label: str) -> None:
    import hashlib
    import numpy as np, torch
    from tsloc.boxes import make_valid
    rng = np.random.default_rng(0)
    n, size = 96, 96
    store = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = torch.as_tensor(rng.integers(0, 10, n))
    boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (n, 4)), dtype=torch.float32))
    aug = {"margin": 0.45, "rotation": 10, "color": 0.3, "blur": 0.3, "recrop": 0.3}
    torch.manual_seed(1)
    from tsloc.crops.model import build_model
    net = build_model("mobilenet_v2", "none", 10, image_size=size, trainable_blocks=8, box="spatial")
    g = torch.Generator().manual_seed(1)
    try:
        from tsloc.crops.batches import Batches, images_source
        from tsloc.crops.loop import fit
        from tsloc.params import TrainParams
        subsets = {"train": Batches(images_source(store[:72], boxes[:72], "cpu", aug, g), labels[:72], boxes[:72]),
                   "valid": Batches(images_source(store[72:], boxes[72:], "cpu"), labels[72:], boxes[72:])}
        best = fit(net, subsets, TrainParams(epochs=2, batch_size=16, seed=1, optimizer="adamw", lr=0.002, backbone_lr=0.5,
                                             weight_decay=1e-4, schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
                                             box_loss="l1+giou", loss_balance="fixed", class_weights="sqrt", box_weights="none",
                                             keep="last"), image_size=size, generator=g)
    except ImportError:
        import tsloc.training as T
        subsets = {"train": T.Batches(T.images_source(store[:72], boxes[:72], "cpu", aug, g), labels[:72], boxes[:72]),
                   "valid": T.Batches(T.images_source(store[72:], boxes[72:], "cpu"), labels[72:], boxes[72:])}
        cfg = T.TrainConfig(epochs=2, batch_size=16, seed=1, num_classes=10, loss=T.LossConfig(size, "l1+giou", "fixed", 0.1, 100.0),
                            optim=T.OptimConfig(0.002, "adamw", 1e-4, 0.5, "cosine", 1), weighting="sqrt", box_weighting="none", keep="last")
        best = T.fit(net, subsets, cfg, generator=g)
    h = hashlib.sha256()
    for k, v in sorted(best["state"].items()):
        if k in ("loss_weight", "uncertainty"):
            continue
        h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
    print(label, best["epoch"], round(best["loss"], 8), h.hexdigest()[:16])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="7ab648e", help="the commit to compare with")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return 0
    with src_at(args.against) as old:
        for label, src in ((args.against, old), ("this tree", REPO / "src")):
            subprocess.run([sys.executable, __file__, "--child", label], env={**os.environ, "PYTHONPATH": str(src)},
                           check=True, stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
