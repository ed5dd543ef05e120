"""The exported model files: ONNX (fp32, and static int8 for ONNX Runtime), and torch.export's
ExportedProgram (`.pt2`). This module owns their format.

Every export is `tsloc.inference.Predictor` traced: it takes uint8 RGB images (N, S, S, 3), each
squashed to the model's square input size (bilinear), normalises them itself, and returns class
probabilities (N, C) and valid boxes (N, 4: left, top, right, bottom, as shares of the width and
height: multiply by the original image's width and height for pixels).

An ONNX file describes itself in its metadata (key `tsloc`, JSON): everything the `.pt` checkpoint
carries except the weights (class ids and names, input size, normalisation, box format, backbone,
recipe, epoch, versions), plus how it was exported (precision, calibration). `read_meta` reads it
back (tsloc.onnxrt); a user never needs the `.pt` beside it.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import ExportError
from .inference import Predictor
from .io import atomic_path
from .model import SignNet
from .onnxrt import META_KEY, read_meta
from .paths import MODEL

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
INPUT = ("images: uint8 RGB (N, S, S, 3), each image squashed to S x S (bilinear); "
         "the normalisation is inside the model")
OUTPUTS = ("probabilities: (N, C) softmax over class ids 0..C-1 (class_names); boxes: (N, 4) left, top, "
           "right, bottom as shares of the image's width and height")
# The last layers before each output: what follows them stays float in the int8 file (the softmax:
# probabilities in 1/256 steps would be useless as confidences; the boxes' scaling and clamping:
# 1/256 of the image, and about 25 small int8 operations with their conversions, 8% of the time at
# batch 1).
LAST_LAYERS = ("Gemm", "MatMul", "Conv")


def _output_tails(graph) -> list:
    """The nodes between each graph output and the last layer that computes it (`LAST_LAYERS`)."""
    producer = {out: node for node in graph.node for out in node.output}
    todo, tails = [o.name for o in graph.output], []
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.op_type not in LAST_LAYERS and node not in tails:
            tails.append(node)
            todo += list(node.input)
    return tails


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
            _set_meta(tmp, description(ckpt, format="onnx", precision="fp32", torch=str(torch.__version__)))
    return out


def _set_meta(path: Path, meta: dict) -> None:
    import onnx
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    model.doc_string = f"tsloc traffic-sign model ({meta.get('recipe', 'notebook')} recipe, " \
                       f"{meta['num_classes']} classes). {INPUT}. {OUTPUTS}."
    onnx.save(model, str(path))


def quantize_int8(fp32: str | Path, out: str | Path, calibration: np.ndarray, *, float_convs: int = 0,
                  batch_size: int = 32, seed: int | None = None) -> Path:
    """Static int8 (QDQ: int8 weights per output channel, uint8 activations, min-max ranges) of an
    fp32 ONNX export, calibrated on `calibration` (uint8 images (N, S, S, 3) from the training set:
    `seed` says how they were drawn, for the metadata). The first `float_convs` convolutions in graph
    order stay float, and the input's padding before them: the early, high-resolution layers are
    where int8 loses accuracy (for MobileNetV2, 3 is the stem and block 1; docs/benchmarks.md)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    if not len(calibration):
        raise ExportError("int8 calibration needs at least one training image")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(calibration), batch_size))

        def get_next(self):
            start = next(self.starts, None)
            return None if start is None else {"images": np.ascontiguousarray(calibration[start:start + batch_size])}

    meta = read_meta(fp32)
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph fusions, as ORT advises
        graph = onnx.load(str(prepared)).graph
        nodes, tails = graph.node, _output_tails(graph)
        keep = [n.name for n in tails]
        convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
        if float_convs:  # with them the input's padding (inference.RawInputConv): no int8 round trip before them
            keep += [n.name for n in nodes[:convs[0]]] + [nodes[i].name for i in convs[:float_convs]]
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer warns through the root logger that 1-D weights have no axis 1
        try:
            quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)
        finally:
            root.setLevel(level)
        meta["export"].update(precision="int8", quantization="static QDQ, int8 weights per channel, uint8 "
                              "activations, min-max calibration", calibration_images=int(len(calibration)),
                              calibration_seed=seed, float_ops=sorted({n.op_type for n in tails}), float_convs=float_convs)
        _set_meta(tmp, meta)
    return out
