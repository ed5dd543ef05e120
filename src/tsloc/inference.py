"""The model as it answers, whatever file it comes from: uint8 images in, class probabilities and
boxes out. predict, evaluate, compare and the exported files all run this one definition, so the
PyTorch model and its ONNX exports cannot drift apart.

- `Predictor`: the trained network wrapped with its input preparation and output activation
  (uint8 RGB (N, S, S, 3) as decoded and squashed -> probabilities (N, C) and valid relative boxes
  (N, 4: left, top, right, bottom, as shares of the width and height)). The ONNX files are this
  module traced.
- `load_backend(path)`: a model file ready to call, the backend chosen from the file: PyTorch for a
  `.pt` checkpoint, ONNX Runtime for a `.onnx` export (fp32 or int8). Both carry the same
  description (class ids and names, input size, normalisation, box format, recipe), as `.meta`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .boxes import make_valid
from .errors import ModelFileError
from .model import IMAGENET_MEAN, IMAGENET_STD, SignNet, load_model

class Predictor(nn.Module):
    """uint8 RGB images (N, S, S, 3) -> (probabilities (N, C), valid relative boxes (N, 4)).

    The ImageNet normalisation is one 1x1 convolution with diagonal weights 1 / (255 std) and bias
    -mean / std: the numbers of data.store.normalise to float rounding (1e-7), and in ONNX Runtime
    one fast convolution where broadcast subtraction and division took a quarter of the int8 model's
    time at batch 64 (benchmarks/inference.py)."""

    def __init__(self, model: SignNet):
        super().__init__()
        self.model = model.eval()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("scale", torch.diag(1 / (255 * std)).view(3, 3, 1, 1), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.conv2d(images.permute(0, 3, 1, 2).float(), self.scale, self.shift)
        logits, boxes = self.model(x)
        return torch.softmax(logits.float(), 1), make_valid(boxes.float())


class TorchBackend:
    """A `.pt` checkpoint through PyTorch (eager; channels-last convolutions)."""

    name = "pytorch"

    def __init__(self, model: SignNet, meta: dict, device="cpu"):
        self.meta, self.device = meta, torch.device(device)
        self.net = Predictor(model).to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, boxes = self.net(torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device))  # a copy: the store is read-only
        return probs.cpu().numpy(), boxes.cpu().numpy()


class OnnxBackend:
    """A `.onnx` export through ONNX Runtime. The file describes itself (tsloc.export.read_meta):
    no `.pt` file is needed beside it."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device="cpu"):
        import onnxruntime as ort

        from .export import read_meta
        self.meta = read_meta(path)
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelFileError(f"{path}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
                                     "or predict on the CPU with --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for a truncated or foreign file
            raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]})") from exc
        self.name = f"onnxruntime {self.meta['export']['precision']}"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, boxes = self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})
        return probs, boxes


def load_backend(path: str | Path, device="cpu", source=None):
    """The backend for a model file, chosen from its suffix (`source`: a file object to read a `.pt`
    from instead of `path`, as compare does for a Git revision)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".onnx":
        return OnnxBackend(path, device)
    if suffix in (".pt", ".pth") or source is not None:
        return TorchBackend(*load_model(path, source), device)
    raise ModelFileError(f"{path}: not a model file tsloc reads (a .pt checkpoint or a .onnx export)")
