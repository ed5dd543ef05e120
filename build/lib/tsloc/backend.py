"""A model file ready to call, the backend chosen from the file: ONNX Runtime for a `.onnx` export
(fp32 or int8; PyTorch is not imported), PyTorch for a `.pt` checkpoint. Both answer uint8 images
(N, S, S, 3) with (probabilities (N, C), relative boxes (N, 4)) and carry the same description as
`.meta`. The same for the scene branch's detector (`load_detector`): a frame in, boxes and scores out."""
from __future__ import annotations

from pathlib import Path

from .errors import ModelFileError
from .onnxrt import OnnxBackend, read_meta
from .paths import DETECTOR, DETECTOR_INT8, DETECTOR_ONNX, first_existing


def pick_device(device: str, files) -> object:
    """`--device` for these model files: `auto` with ONNX files only asks ONNX Runtime, so PyTorch is
    never imported; any other choice (or a `.pt` file) is PyTorch's, checked (tsloc.device)."""
    if device == "auto" and all(Path(f).suffix.lower() == ".onnx" for f in files):
        from .onnxrt import auto_device
        return auto_device()
    if device == "cpu":
        return "cpu"
    from .device import select_device
    return select_device(device)


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


def load_detector(path: str | Path, device="cpu"):
    """The detector for a file: ONNX Runtime for `.onnx` (no torch), torchvision's FCOS for `.pt`."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".onnx":
        from .scenes.onnxdet import OnnxDetector
        return OnnxDetector(path, device)
    if suffix in (".pt", ".pth"):
        from .scenes.detector import TorchDetector, load
        return TorchDetector(*load(path), device)
    raise ModelFileError(f"{path}: not a detector file tsloc reads (models/detector.pt or an .onnx export of it)")


def default_detector() -> Path:
    """The pipeline's detector for `tsloc detect`: the int8 file where the detector_export stage found
    it kept AP50 (its metadata says so), else the fp32 ONNX file, else the PyTorch one."""
    if DETECTOR_INT8.is_file() and read_meta(DETECTOR_INT8)["export"].get("kept"):
        return DETECTOR_INT8
    return first_existing(DETECTOR_ONNX, DETECTOR)
