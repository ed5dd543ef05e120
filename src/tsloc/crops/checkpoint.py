"""The model file (models/model.pt): how it is written, read, checked against the data and
described. One dict in types `torch.load(..., weights_only=True)` accepts: the weights and
everything inference needs (classes, input size, normalisation, box format), plus how it was
trained. The ONNX exports carry the same description without the weights (tsloc.crops.export)."""
from __future__ import annotations

import platform
from pathlib import Path

import torch
import torchvision

from ..backbone import backbone_features
from ..errors import DataError, ModelFileError
from ..io import write_torch
from ..paths import IMAGE_STORE, SPLIT_TABLE
from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .model import Ensemble, SignNet

BOX_FORMAT = "left, top, right, bottom, relative to the image (0..1)"
# Before the loss balance moved to the objective (tsloc.crops.losses), the model held it: such files still load.
BALANCE_KEYS = ("loss_weight", "uncertainty")


def make(model: SignNet | Ensemble, state: dict, *, backbone: str, image_size: int, class_names: list[str], epoch: int,
         loss_weight: float, **training: object) -> dict:
    """The file's contents: `state` (the kept weights) and the description; `training` adds how it
    was trained (weights, recipe, train params). An Ensemble's file says how many members it holds."""
    return {
        "state_dict": state,
        **({"members": len(model.members)} if isinstance(model, Ensemble) else {}),
        "backbone": backbone,
        "box_head": model.box_kind,
        "num_classes": len(class_names),
        "dropout": float(model.dropout.p),
        "image_size": int(image_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "class_ids": list(range(len(class_names))),
        "class_names": list(class_names),
        "box_format": BOX_FORMAT,
        "epoch": int(epoch),
        "loss_weight": float(loss_weight),
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                     "python": platform.python_version()},
        **training,
    }


def save(path: str | Path, ckpt: dict) -> None:
    write_torch(path, ckpt)


def _network(ckpt: dict) -> SignNet:
    """The untrained network a file describes (its weights are loaded after)."""
    body, features = backbone_features(ckpt["backbone"], "none")
    return SignNet(body, features, ckpt["num_classes"], ckpt["dropout"], image_size=ckpt["image_size"],
                   box=ckpt.get("box_head", "pooled"))


def load(path: str | Path, source=None) -> tuple[SignNet, dict]:
    """A trained model in eval mode and its description (no ImageNet weights needed: the file holds
    them all). `source`, a binary file object, is read instead of `path` (which then only names it
    in errors: compare reads a Git revision's file)."""
    path = Path(path)
    if source is None and not path.is_file():
        raise ModelFileError(f"{path}: model file not found (train one with `dvc repro train`)")
    try:
        ckpt = torch.load(path if source is None else source, map_location="cpu", weights_only=True)
        model = Ensemble([_network(ckpt) for _ in range(ckpt["members"])]) if "members" in ckpt else _network(ckpt)
        model.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if k not in BALANCE_KEYS})
    except Exception as exc:  # unpickling errors, missing keys, shape mismatches
        raise ModelFileError(f"{path}: not a compatible tsloc model ({type(exc).__name__}: {exc})") from exc
    return model.eval(), ckpt


def check_fits(ckpt: dict, store, split, model: Path | str) -> None:
    """A model from another run (a stale or copied model file) against this image store and data:
    one clear message instead of a shape error or wrong class names."""
    size = store.shape[1]
    if ckpt["image_size"] != size:
        raise DataError(f"{model}: the model takes {ckpt['image_size']}-px images but {IMAGE_STORE} "
                        f"holds {size}-px ones (data.image_size changed since training?): run dvc repro")
    top = int(split["class_id"].max())
    if top >= ckpt["num_classes"]:
        raise DataError(f"{model}: the model knows {ckpt['num_classes']} classes but {SPLIT_TABLE} has class id "
                        f"{top} (trained on another data set?): run dvc repro")
