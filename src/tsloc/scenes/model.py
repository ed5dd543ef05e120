"""The detector: torchvision's FCOS (anchor-free, one point per feature-map cell) on the offline
ImageNet MobileNetV2, class-agnostic (it finds signs; the crop model names them).

- Features at stride 8 and 16 (MobileNetV2's block 6, and block `top_block`: 13 by default, 7-10
  for a lighter trunk) through a feature pyramid (torchvision's BackboneWithFPN, plus its
  max-pooled level at stride 32): a 16-px sign covers 2 x 2 cells at stride 8. The blocks after it
  (up to stride 32 and 1280 channels) are not run: signs are at most about 130 px.
- BatchNorm frozen (torchvision's FrozenBatchNorm2d, as its detection models do with a pretrained
  backbone): windows of a few signs are small batches. The first `frozen_blocks` blocks do not train.
- No resizing (`NativeSize`): windows and whole frames run at their own size, so a 16-px sign stays
  16 px; torchvision's transform still normalises and pads to a multiple of 32.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from ..backbone import backbone_features, fuse_conv_bn
from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .decode import nms, vote

STRIDE_8 = 6                       # MobileNetV2's last block at stride 8 (32 channels)
STRIDE_16 = range(7, 14)           # its blocks at stride 16: 64 channels up to block 10, 96 after
STRIDES = (8, 16, 32)              # the two levels and the pyramid's max-pooled one


class NativeSize(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, batch, pad to a multiple of 32) without resizing."""

    def resize(self, image, target=None):
        return image, target


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by torchvision's FrozenBatchNorm2d with its statistics and affine."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def build_detector(weights: str = "imagenet", fpn_channels: int = 64, head_convs: int = 2, frozen_blocks: int = 4,
                   top_block: int = 13, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                   detections_per_img: int = 50, seed: int | None = None, fold_frozen: bool = True) -> FCOS:
    """FCOS with one class (a sign) on MobileNetV2's blocks 0 to `top_block` and a small feature pyramid.
    `seed`: the new layers' initial weights (else whatever state PyTorch's generator is in).
    `fold_frozen`: the frozen blocks' BatchNorm folded into their convolutions (the same function, one
    pass over each activation instead of two; detectors saved before it were trained unfolded)."""
    if top_block not in STRIDE_16:
        raise ValueError(f"top_block {top_block}: MobileNetV2's blocks at stride 16 are {STRIDE_16.start}-{STRIDE_16.stop - 1}")
    if seed is not None:
        torch.manual_seed(seed)
    body, _ = backbone_features("mobilenet_v2", weights)
    blocks = [fuse_conv_bn(b) if fold_frozen and i < frozen_blocks else b for i, b in enumerate(body[:top_block + 1])]
    trunk = freeze_batchnorm(nn.Sequential(*blocks))
    for i, block in enumerate(trunk):
        for p in block.parameters():
            p.requires_grad_(i >= frozen_blocks)
    levels = {str(STRIDE_8): "0", str(top_block): "1"}
    fpn = BackboneWithFPN(trunk, levels, [32, 64 if top_block <= 10 else 96], fpn_channels)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in STRIDES), aspect_ratios=((1.0,),) * len(STRIDES))
    head = FCOSHead(fpn_channels, anchors.num_anchors_per_location()[0], 1, num_convs=head_convs)
    # Each box distance starts at one stride, not 0: torchvision's regression head ends in a ReLU, and a
    # distance starting at 0 can die for good (seen: the left distance stuck at 0 everywhere, its bias
    # never moved, finding AP50 0.11 instead of 1.0 on the synthetic default, one machine, seed 0).
    nn.init.constant_(head.regression_head.bbox_reg.bias, 1.0)
    model = FCOS(fpn, num_classes=1, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                 nms_thresh=nms_thresh, detections_per_img=detections_per_img)
    model.transform = NativeSize(800, 1333, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=32)
    model.fold_frozen = fold_frozen  # saved with the config: the file's layers depend on it
    return model


def architecture(d) -> dict:
    """The detector.* params (tsloc.params.DetectorParams) that shape the network: `build_detector`'s
    keywords, kept in the detector file's config."""
    return {"fpn_channels": d.fpn_channels, "head_convs": d.head_convs, "frozen_blocks": d.frozen_blocks,
            "top_block": d.top_block}


def frame_tensor(frame, device="cpu") -> torch.Tensor:
    """A uint8 RGB frame (H, W, 3, or a PIL image) as the float CHW tensor in 0..1 torchvision's detection
    models take, on `device`; copied only where it is not a contiguous writable array already (a PIL
    image's is not). It travels to a GPU as uint8 and becomes float there: a quarter of the bytes, and
    the conversion off the CPU."""
    import numpy as np
    pixels = torch.from_numpy(np.require(frame, requirements=["C", "W"])).to(device)
    return pixels.permute(2, 0, 1).float().div_(255)


class TorchDetector:
    """`detector(frame)` -> (boxes (N, 4) in pixels, scores (N,)): torchvision's FCOS on a uint8 frame
    (H, W, 3), as tsloc.serving.backend.OnnxDetector answers from the ONNX file."""

    def __init__(self, model: FCOS, meta: dict, device=torch.device("cpu")):
        # channels-last: 1.8x faster on the CPU (oneDNN's convolutions), the same detections
        self.model, self.meta, self.device = model.to(device, memory_format=torch.channels_last).eval(), meta, device
        self.name = f"pytorch {device}"
        self.score_thresh = model.score_thresh

    @torch.no_grad()
    def __call__(self, frame, min_score: float = 0.0, vote_iou: float = 0.0):
        """Detections scoring at least `min_score` (and the model's own threshold), as OnnxDetector;
        `vote_iou` > 0: FCOS's candidates kept whole (no suppression inside it), then NMS by its rule and
        box voting (tsloc.scenes.decode) as the ONNX file's decoding does."""
        model = self.model
        model.score_thresh = max(self.score_thresh, min_score)
        if not vote_iou:
            found = model([frame_tensor(frame, self.device)])[0]
            return found["boxes"].cpu().numpy(), found["scores"].cpu().numpy()
        nms_thresh, most = model.nms_thresh, model.detections_per_img
        model.nms_thresh, model.detections_per_img = 1.0, 10**9  # IoU never exceeds 1: every candidate stays
        try:
            found = model([frame_tensor(frame, self.device)])[0]
        finally:
            model.nms_thresh, model.detections_per_img = nms_thresh, most
        boxes, scores = found["boxes"].cpu().numpy(), found["scores"].cpu().numpy()
        keep = nms(boxes, scores, nms_thresh)[:most]
        return vote(boxes[keep], boxes, scores, vote_iou), scores[keep]


def save(path, model: FCOS, config: dict, **description) -> None:
    """models/detector.pt: the weights, what `build_detector` needs to rebuild it, and the rest."""
    import platform

    import torchvision

    from ..io import write_torch
    config = {**config, "fold_frozen": getattr(model, "fold_frozen", False)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # a file that loads anywhere
    write_torch(path, {"state_dict": state, "config": config, "strides": list(STRIDES),
                       "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                                    "python": platform.python_version()}, **description})


def load(path) -> tuple[FCOS, dict]:
    """A trained detector in eval mode and its description; one message when the file is missing or foreign."""
    from pathlib import Path

    from ..errors import ModelFileError
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: detector file not found (train one with `dvc repro detector_train`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = build_detector("none", **{"fold_frozen": False, **ckpt["config"]})  # older files: unfolded
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # unpickling errors, missing keys, shape mismatches
        raise ModelFileError(f"{path}: not a compatible tsloc detector ({type(exc).__name__}: {exc})") from exc
    return model.eval(), ckpt
