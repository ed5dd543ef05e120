"""One rank of the 2-process test (tests/test_distributed.py), started by torchrun or alone: `fit`
on small learnable features through `tsloc.crops.runtime.runtime`, recording which rows each pass fetched,
then the results as JSON (one file per rank) in argv[1]."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tsloc.boxes import make_valid
from tsloc.crops.model import SignNet
from tsloc.crops.batches import Batches, features_source
from tsloc.crops.loop import fit
from tsloc.params import TrainParams
from tsloc.crops.runtime import runtime

processes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
rt = runtime("cpu", "fp32", processes)
rng = np.random.default_rng(0)
n, classes = 96, 3
labels = torch.as_tensor(rng.integers(0, classes, n))
centres = rng.normal(size=(classes, 64)).astype(np.float32)
feats = centres[labels.numpy()] + 0.8 * rng.normal(size=(n, 64)).astype(np.float32)  # a class signal to learn
boxes = make_valid(torch.as_tensor(rng.uniform(0.1, 0.9, (n, 4)), dtype=torch.float32))
seen: dict[str, list] = {"train": [], "valid": []}


def spy(source, name, offset):
    def fetch(idx, train, size=None):
        seen[name].append((idx + offset).tolist())
        return source(idx, train, size)
    return fetch


subsets = {"train": Batches(spy(features_source(feats[:64], boxes[:64], rt.device), "train", 0), labels[:64], boxes[:64]),
           "valid": Batches(spy(features_source(feats[64:], boxes[64:], rt.device), "valid", 64), labels[64:], boxes[64:])}
torch.manual_seed(0)
model = SignNet(torch.nn.Sequential(torch.nn.Identity()), 64, num_classes=classes, dropout=0.0)
model.start_boxes_at(boxes[:64].mean(0))
history = []
train = TrainParams(epochs=4, batch_size=16, seed=1, loss_balance="fixed", lr=0.01, class_weights="none", keep="last")
best = fit(model, subsets, train, image_size=64, rt=rt, log=lambda epoch, row, _: history.append(row))
weights = {k: v.flatten()[:8].tolist() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
out = Path(sys.argv[1]) / f"rank{rt.world.rank}.json"
out.write_text(json.dumps({"rank": rt.world.rank, "size": rt.world.size, "seen": seen, "history": history,
                           "weights": weights, "kept_epoch": best["epoch"], "threads": torch.get_num_threads()}))
