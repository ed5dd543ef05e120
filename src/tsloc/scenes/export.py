"""The detector as an ONNX file: the graph takes one uint8 RGB frame (H, W, 3) of any size, normalises
it, pads it to a multiple of 32 (as torchvision's transform does: zeros after normalising) and runs
the backbone, the feature pyramid and the head; it returns each cell's score (P,) and box distances
(P, 4). Decoding and non-maximum suppression happen outside the graph (tsloc.scenes.decode): they
are a few NumPy lines, and a graph without them keeps any frame size and quantises cleanly.

The file describes itself in its metadata (tsloc.onnxfile.META_KEY): `kind: detector`, the strides,
the postprocessing's thresholds, and the `.pt` file's description."""
from __future__ import annotations

import copy
import json

import torch
from torch import nn
from torchvision.models.detection import FCOS

from ..io import atomic_path
from ..onnxfile import set_meta
from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .decode import PAD

INPUT = "frame: uint8 RGB (H, W, 3), any size; normalisation and padding are inside the model"
OUTPUTS = ("scores: (P,) each cell's sqrt(sign probability x centredness), cells level by level (strides), row by "
           "row; distances: (P, 4) left, top, right, bottom from the cell's centre in units of its stride")


class DetectorGraph(nn.Module):
    """The part of torchvision's FCOS that the ONNX file holds: pixels to per-cell scores and distances."""

    def __init__(self, fcos: FCOS):
        super().__init__()
        self.backbone, self.head = fcos.backbone, fcos.head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (frame.permute(2, 0, 1).float() - self.mean) / self.std
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, (PAD - w % PAD) % PAD, 0, (PAD - h % PAD) % PAD))
        out = self.head(list(self.backbone(x[None]).values()))
        scores = torch.sqrt(torch.sigmoid(out["cls_logits"]) * torch.sigmoid(out["bbox_ctrness"]))
        return scores[0, :, 0], out["bbox_regression"][0]


def description(model: FCOS, ckpt: dict, **export) -> dict:
    """The ONNX file's metadata: the detector file's description (no weights) and its postprocessing."""
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta.update(kind="detector", score_thresh=model.score_thresh, nms_thresh=model.nms_thresh,
                topk=model.topk_candidates, max_detections=model.detections_per_img)
    meta["export"] = {"input": INPUT, "outputs": OUTPUTS, **export}
    return meta


def export_detector(model: FCOS, ckpt: dict, out, example: torch.Tensor | None = None):
    """Write the detector (fp32) as ONNX to `out`, its frame size dynamic; returns `out`."""
    graph = DetectorGraph(copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)).eval()
    if example is None:
        example = torch.randint(0, 256, (200, 328, 3), dtype=torch.uint8)
    dims = {0: torch.export.Dim("height", min=32, max=8192), 1: torch.export.Dim("width", min=32, max=8192)}
    with atomic_path(out) as tmp:
        program = torch.onnx.export(graph, (example,), input_names=["frame"], output_names=["scores", "distances"],
                                    dynamic_shapes=(dims,), dynamo=True, verbose=False)
        program.save(str(tmp))
        meta = description(model, ckpt, format="onnx", precision="fp32", torch=str(torch.__version__))
        set_meta(tmp, meta, f"tsloc traffic-sign detector. {INPUT}. {OUTPUTS}. Metadata 'tsloc': {json.dumps(list(meta))}")
    return out
