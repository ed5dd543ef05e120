"""A model file ready to call, the backend chosen from the file: ONNX Runtime for a `.onnx` export
(fp32 or int8; PyTorch is not imported), PyTorch for a `.pt` checkpoint. Both answer uint8 images
(N, S, S, 3) with (probabilities (N, C), relative boxes (N, 4)) and carry the same description as
`.meta`."""
from __future__ import annotations

from pathlib import Path

from .errors import ModelFileError
from .onnxrt import OnnxBackend


def load_backend(path: str | Path, device="cpu", source=None):
    """The backend for a model file, chosen from its suffix (`source`: a file object to read a `.pt`
    from instead of `path`, as compare does for a Git revision)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".onnx":
        return OnnxBackend(path, device)
    if suffix in (".pt", ".pth") or source is not None:
        from .checkpoint import load
        from .inference import TorchBackend
        return TorchBackend(*load(path, source), device)
    raise ModelFileError(f"{path}: not a model file tsloc reads (a .pt checkpoint or a .onnx export)")
