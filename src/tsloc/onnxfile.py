"""An exported ONNX file: its ONNX Runtime session (CPU or CUDA) and the description tsloc writes into
it under `META_KEY`. Shared by both branches' exports and by serving's backends; imports neither torch
nor torchvision (onnx only to write a file's metadata)."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelFileError

META_KEY = "tsloc"  # the metadata key holding the file's description (JSON)
# ONNX Runtime's worker threads spin after each run by default, holding the cores that the next model and
# Python's own work (decoding, NMS, cropping) then need: tsloc detect runs three models in turn on every
# frame. Off, it runs 1.6-2x the frames a second on 2 cores (benchmarks/onnx_spinning.py).
SPIN = False


def read_meta(path: str | Path, sess=None) -> dict:
    """The description an ONNX export carries: everything the `.pt` checkpoint holds but the
    weights (class ids and names, input size, normalisation, box format, recipe), plus how it was
    exported. Read through ONNX Runtime (`sess`, or a CPU session made for it: about 80 ms), not the
    onnx package, whose import alone takes a second: a one-image predict starts in well under one."""
    props = (sess or session(path)).get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ModelFileError(f"{path}: an ONNX file, but not a tsloc export (no '{META_KEY}' metadata: "
                             "export it with `tsloc export`)")
    return json.loads(props[META_KEY])


TRACE_KEY = "pkg.torch.onnx.stack_trace"  # torch.onnx.export(dynamo=True)'s note on each node: file paths


def _drop_traces(graph) -> None:
    """Remove TRACE_KEY from every node of `graph`, its subgraphs' too (If, Loop)."""
    for node in graph.node:
        kept = [p for p in node.metadata_props if p.key != TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _drop_traces(sub)


def set_meta(path: Path, meta: dict, doc: str | None = None) -> None:
    """Write the file's description under `META_KEY` (and its doc string, when given), without the
    exporter's per-node stack traces: they name this checkout's absolute paths, so the same model
    exported from another clone would be another file to DVC (`dvc.lock`)."""
    import onnx
    model = onnx.load(str(path))
    del model.metadata_props[:]
    _drop_traces(model.graph)
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    if doc is not None:
        model.doc_string = doc
    onnx.save(model, str(path))


def auto_device() -> str:
    """`--device auto` for ONNX files without asking PyTorch: CUDA where this onnxruntime has it."""
    import onnxruntime as ort
    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def session(path: str | Path, device="cpu"):
    """An ONNX Runtime session for the file, on CUDA when `device` says so (one message when this
    onnxruntime has no CUDA provider, or the file is truncated or foreign)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ModelFileError(f"{path}: model file not found (export one with `dvc repro export`)")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelFileError(f"{path}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
                                 "or run on the CPU with --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for a truncated or foreign file
        raise ModelFileError(f"{path}: not an ONNX file ONNX Runtime can load ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from exc
