"""Static int8 quantization of an exported ONNX file with ONNX Runtime's quantizer, for the crop
model (tsloc.crops.export) and the detector (tsloc.scenes.export) alike. No torch: it reads and writes
ONNX files only."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from .errors import ExportError
from .io import atomic_path
from .onnxfile import read_meta, set_meta

# The last layers before each output: what follows them stays float in the int8 file (the softmax:
# probabilities in 1/256 steps would be useless as confidences; the boxes' scaling and clamping:
# 1/256 of the image, and about 25 small int8 operations with their conversions, 8% of the time at
# batch 1).
LAST_LAYERS = ("Gemm", "MatMul", "Conv")
# ONNX Runtime multiplies uint8 activations by int8 weights. On x86 CPUs without VNNI (AVX2, AVX-512
# without VNNI) it adds pairs of products in 16 bits, which saturates for 8-bit weights (255 x 127 x 2
# > 32767): the same file then scores differently by CPU (the ready model: 99.13% on an AVX2 machine,
# 99.29% on a VNNI one). 7-bit weights (`reduce_range`, ONNX Runtime's remedy) keep every pair's sum
# under 255 x 64 x 2 = 32640: the same integer arithmetic on every CPU.
WEIGHT_RANGE = (-64, 64)  # symmetric 7-bit, as ONNX Runtime writes it


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


def quantize_int8(fp32: str | Path, out: str | Path, calibration: np.ndarray, *, float_convs: int = 0,
                  batch_size: int | None = 32, seed: int | None = None, input_name: str = "images",
                  symbolic_shapes: bool = True) -> Path:
    """Static int8 (QDQ: 7-bit int8 weights per output channel (`WEIGHT_RANGE`), uint8 activations,
    min-max ranges) of an
    fp32 ONNX export, calibrated on `calibration` (uint8 images (N, S, S, 3) from the training set:
    `seed` says how they were drawn, for the metadata). The first `float_convs` convolutions in graph
    order stay float, and the input's padding before them: the early, high-resolution layers are
    where int8 loses accuracy (for MobileNetV2, 3 is the stem and block 1; docs/benchmarks.md).
    `batch_size=None` feeds the items one by one as they are (the detector's frames, of any size);
    `symbolic_shapes=False` skips ONNX Runtime's symbolic shape inference, which gives up on a graph
    that pads a frame of any size (ONNX's own shape inference still runs)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration):
        raise ExportError("int8 calibration needs at least one training image")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(calibration), batch_size or 1))

        def get_next(self):
            start = next(self.starts, None)
            if start is None:
                return None
            batch = calibration[start] if batch_size is None else calibration[start:start + batch_size]
            return {input_name: np.ascontiguousarray(batch)}

    meta = read_meta(fp32)
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=not symbolic_shapes)  # as ORT advises
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
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)
        finally:
            root.setLevel(level)
        meta["export"].update(precision="int8", quantization="static QDQ, 7-bit int8 weights per channel "
                              "(reduce_range: no saturation without VNNI), uint8 activations, min-max calibration", calibration_images=len(calibration),
                              calibration_seed=seed, float_ops=sorted({n.op_type for n in tails}), float_convs=float_convs)
        set_meta(tmp, meta)
    return out


def saturating_weights(path: str | Path) -> list[str]:
    """The int8 weight tensors of a quantized file outside `WEIGHT_RANGE`: where x86 CPUs without VNNI
    can saturate, so that the file's answers depend on the CPU (empty: the same on every CPU)."""
    import onnx
    from onnx import numpy_helper
    lo, hi = WEIGHT_RANGE
    out = []
    for t in onnx.load(str(path)).graph.initializer:
        if t.data_type == onnx.TensorProto.INT8:
            w = numpy_helper.to_array(t)
            if w.size > 1 and (w.min() < lo or w.max() > hi):
                out.append(t.name)
    return out
