"""ONNX Runtime as a backend: an exported model file read with its own description (the metadata
tsloc.export writes under `META_KEY`) and run on uint8 images. Imports neither torch nor
torchvision: an ONNX model needs only ONNX Runtime and NumPy (onnx only to write a file's metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ModelFileError

META_KEY = "tsloc"  # the metadata key holding the file's description (JSON)


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


def set_meta(path: Path, meta: dict, doc: str | None = None) -> None:
    """Write the file's description under `META_KEY` (and its doc string, when given)."""
    import onnx
    model = onnx.load(str(path))
    del model.metadata_props[:]
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
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for a truncated or foreign file
        raise ModelFileError(f"{path}: not an ONNX file ONNX Runtime can load ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from exc


class OnnxBackend:
    """A `.onnx` export through ONNX Runtime. The file describes itself (`read_meta`):
    no `.pt` file is needed beside it. On the CPU a call's images run in chunks of `CPU_CHUNK`: per
    crop 20-35% faster than whole batches of 64, fp32 and int8 alike (the activations of a few
    images stay in cache; docs/benchmarks.md#inference)."""

    CPU_CHUNK = 8

    name = "onnxruntime"

    def __init__(self, path: str | Path, device="cpu"):
        self.session = session(path, device)
        self.meta = read_meta(path, self.session)
        if self.meta.get("kind") == "detector":
            raise ModelFileError(f"{path}: a tsloc detector, not a crop model (give it as --detector)")
        self.name = f"onnxruntime {self.meta['export']['precision']}"
        on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        self.chunk = None if on_gpu else self.CPU_CHUNK  # a GPU wants whole batches

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(images, dtype=np.uint8)
        step = self.chunk or max(len(x), 1)
        parts = [self.session.run(None, {"images": x[i:i + step]}) for i in range(0, max(len(x), 1), step)]
        probs, boxes = (np.concatenate(outputs) for outputs in zip(*parts))
        return probs, boxes
