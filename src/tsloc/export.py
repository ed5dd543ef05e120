"""Self-contained exports of a trained model: ONNX, and torch.export's ExportedProgram (`.pt2`,
what current PyTorch recommends over TorchScript).

The exported model takes float32 RGB images in [0, 1], already resized to the model's square input
(N, 3, S, S), normalises them itself, and returns class probabilities (N, C) and valid boxes
(N, 4: left, top, right, bottom, relative to the image): multiply by the original width and height
for pixels.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .boxes import make_valid
from .errors import ExportError
from .io import atomic_path
from .model import SignNet

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}


class Exportable(nn.Module):
    def __init__(self, model: SignNet, mean, std):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor):
        x = (images - self.mean) / self.std
        logits, boxes = self.model(x)
        return torch.softmax(logits, dim=1), make_valid(boxes)


def export(model: SignNet, ckpt: dict, fmt: str, out: str | Path | None = None) -> Path:
    """Write the model in `fmt` next to the checkpoint (or to `out`); returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    out = Path(out or Path("models") / f"model{FORMATS[fmt]}")
    wrapper = Exportable(model, ckpt["mean"], ckpt["std"]).eval()
    size = ckpt["image_size"]
    example = (torch.rand(2, 3, size, size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(out) as tmp:
        if fmt == "pt2":
            program = torch.export.export(wrapper, example, dynamic_shapes=({0: batch},))
            torch.export.save(program, tmp)
        else:
            try:
                import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
            except ModuleNotFoundError as exc:
                raise ExportError("ONNX export needs the optional extra: pip install 'tsloc[onnx]'") from exc
            onnx_program = torch.onnx.export(wrapper, example, input_names=["images"],
                                             output_names=["probabilities", "boxes"],
                                             dynamic_shapes=({0: batch},), dynamo=True)
            onnx_program.save(str(tmp))
    return out
