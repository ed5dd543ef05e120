"""The exported model files: ONNX (fp32; its int8 version: tsloc.quantize), and torch.export's
ExportedProgram (`.pt2`). This module owns their format.

Every export is `tsloc.crops.inference.Predictor` traced: it takes uint8 RGB images (N, S, S, 3), each
squashed to the model's square input size (bilinear), normalises them itself, and returns class
probabilities (N, C) and valid boxes (N, 4: left, top, right, bottom, as shares of the width and
height: multiply by the original image's width and height for pixels).

An ONNX file describes itself in its metadata (key `tsloc`, JSON): everything the `.pt` checkpoint
carries except the weights (class ids and names, input size, normalisation, box format, backbone,
recipe, epoch, versions), plus how it was exported (precision, calibration). `read_meta` reads it
back (tsloc.onnxfile); a user never needs the `.pt` beside it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_path
from ..onnxfile import set_meta
from ..paths import MODEL
from .inference import Predictor
from .model import SignNet

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
INPUT = ("images: uint8 RGB (N, S, S, 3), each image squashed to S x S (bilinear); "
         "the normalisation is inside the model")
OUTPUTS = ("probabilities: (N, C) softmax over class ids 0..C-1 (class_names); boxes: (N, 4) left, top, "
           "right, bottom as shares of the image's width and height")
def _example(ckpt: dict) -> tuple[torch.Tensor]:
    size = ckpt["image_size"]
    return (torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8),)


def description(ckpt: dict, **export: object) -> dict:
    """The exported file's metadata: the checkpoint's description, without the weights."""
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["export"] = {"input": INPUT, "outputs": OUTPUTS, **export}
    return meta


def export(model: SignNet, ckpt: dict, fmt: str, out: str | Path | None = None) -> Path:
    """Write the model in `fmt` (fp32) next to the checkpoint (or to `out`); returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    out = Path(out or MODEL.with_suffix(FORMATS[fmt]))
    net = Predictor(model).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(out) as tmp:
        if fmt == "pt2":
            program = torch.export.export(net, _example(ckpt), dynamic_shapes=({0: batch},))
            torch.export.save(program, tmp)
        else:
            program = torch.onnx.export(net, _example(ckpt), input_names=["images"],
                                        output_names=["probabilities", "boxes"],
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
            program.save(str(tmp))
            meta = description(ckpt, format="onnx", precision="fp32", torch=str(torch.__version__))
            set_meta(tmp, meta, f"tsloc traffic-sign model ({meta.get('recipe', 'notebook')} recipe, "
                                f"{meta['num_classes']} classes). {INPUT}. {OUTPUTS}.")
    return out
