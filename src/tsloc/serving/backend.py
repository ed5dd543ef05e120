"""Any model file as a callable, the one place that turns a file into one: ONNX Runtime for a `.onnx`
export (fp32 or int8; PyTorch is not imported), PyTorch for a `.pt` checkpoint (the branch's own
backend: tsloc.crops.inference.TorchBackend, tsloc.scenes.model.TorchDetector, imported only then).
Crop models answer uint8 images (N, S, S, 3) with (probabilities (N, C), relative boxes (N, 4));
detectors (`load_detector`) a frame with boxes and scores. Each carries its file's description as `.meta`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..onnxfile import read_meta, session
from ..paths import DETECTOR, DETECTOR_INT8, DETECTOR_ONNX, first_existing


def pick_device(device: str, files) -> object:
    """`--device` for these model files: `auto` with ONNX files only asks ONNX Runtime, so PyTorch is
    never imported; any other choice (or a `.pt` file) is PyTorch's, checked (tsloc.device). A missing
    file is said first: an install without PyTorch would otherwise fail importing it for a `.pt` name."""
    for f in files:
        if not Path(f).is_file():
            raise ModelFileError(f"{f}: model file not found")
    if device == "auto" and all(Path(f).suffix.lower() == ".onnx" for f in files):
        from ..onnxfile import auto_device
        return auto_device()
    if device == "cpu":
        return "cpu"
    from ..device import select_device
    return select_device(device)


def load_backend(path: str | Path, device="cpu", source=None):
    """The backend for a model file, chosen from its suffix (`source`: a file object to read a `.pt`
    from instead of `path`, as compare does for a Git revision); on a GPU its batches come in few
    sizes (`GpuBatches`)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".onnx":
        backend = OnnxBackend(path, device)
    elif suffix in (".pt", ".pth") or source is not None:
        from ..crops.checkpoint import load
        from ..crops.inference import TorchBackend
        backend = TorchBackend(*load(path, source), device)
    else:
        raise ModelFileError(f"{path}: not a model file tsloc reads (a .pt checkpoint or a .onnx export)")
    return GpuBatches(backend) if str(device).startswith("cuda") else backend


BUCKET = 64  # batch sizes on a GPU: the powers of two up to this, then its multiples


def bucket(n: int) -> int:
    """The batch size a GPU runs `n` images at (`GpuBatches`): 1, 2, 4 ... BUCKET, then multiples of BUCKET."""
    return 1 << max(n - 1, 0).bit_length() if n <= BUCKET else -(-n // BUCKET) * BUCKET


class GpuBatches:
    """A crop model on a GPU, each call's images made up with blank ones to a size of `bucket`'s.
    A frame's detections come in any count, and a batch size the GPU has not run yet costs cuDNN a
    plan for each convolution: about a millisecond of host time each in PyTorch (its cold start,
    measured in pytorch/pytorch#187212), an algorithm search in ONNX Runtime's CUDA provider; the
    namer and the refiner have about 50 each. On the CPU batches stay as they are (the padding
    would be computed there, and its answers are what they were). An image's answer does not depend
    on the others in the batch: the blank ones' are dropped."""

    def __init__(self, backend):
        self.backend, self.meta, self.name = backend, backend.meta, backend.name

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        size = bucket(n)
        if not n or size == n:
            return self.backend(images)
        batch = np.zeros((size, *np.shape(images)[1:]), np.uint8)
        batch[:n] = images
        return tuple(out[:n] for out in self.backend(batch))


def load_detector(path: str | Path, device="cpu", refine: bool = True):
    """The detector for a file: ONNX Runtime for `.onnx` (no torch), torchvision's FCOS for `.pt`; its
    boxes tightened by the refiner beside it where there is one (`refiner_beside`) and its file does not
    say it loosens boxes (`tightens` false: refiner_train found it did on the validation signs); `refine`
    False: as the detector found them."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".onnx":
        detector = OnnxDetector(path, device)
    elif suffix in (".pt", ".pth"):
        from ..scenes.model import TorchDetector, load
        detector = TorchDetector(*load(path), device)
    else:
        raise ModelFileError(f"{path}: not a detector file tsloc reads (models/detector.pt or an .onnx export of it)")
    beside = refiner_beside(path)
    refiner = load_backend(beside, device) if refine and beside.is_file() else None
    return Refined(detector, refiner) if refiner is not None and refiner.meta.get("tightens", True) else detector


def refiner_beside(detector_file: str | Path) -> Path:
    """The refiner that goes with a detector file: the same folder and prefix, PyTorch's for a `.pt`
    detector (models/detector.pt: models/refiner.pt), else ONNX (models/detector.int8.onnx:
    models/refiner.onnx; a ready pair's gtsdb.detector.onnx: gtsdb.refiner.onnx)."""
    path = Path(detector_file)
    prefix = path.name.split("detector")[0] if "detector" in path.name else ""
    return path.with_name(f"{prefix}refiner{'.pt' if path.suffix.lower() in ('.pt', '.pth') else '.onnx'}")


class Refined:
    """A detector whose boxes a second stage tightens: each found box cut from the frame with the
    refiner's margin (its file's `crop_margin`) and replaced by the refiner's box there (a crop model
    trained on the training frames' signs, re-framed at random: tsloc.pipeline.refiner_train). The
    scores stay the detector's; the detector protocol and `.meta` too."""

    def __init__(self, detector, refiner):
        from .namer import margin_of  # here, so that the stages loading crop models only do not load it
        self.detector, self.refiner, self.meta = detector, refiner, detector.meta
        self.margin, self.name = margin_of(refiner.meta), f"{detector.name}, refined by {refiner.name}"

    def __call__(self, frame: np.ndarray, min_score: float = 0.0, vote_iou: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        from .namer import name
        boxes, scores = self.detector(frame, min_score, vote_iou)
        if len(boxes):
            h, w = frame.shape[:2]
            boxes = np.clip(name(self.refiner, frame, boxes, self.margin)[1], 0, [w, h, w, h]).astype(boxes.dtype)
        return boxes, scores


def default_detector() -> Path:
    """The pipeline's detector for `tsloc detect`: the int8 file where the detector_export stage found
    it kept AP50 (its metadata says so), else the fp32 ONNX file, else the PyTorch one."""
    if DETECTOR_INT8.is_file() and read_meta(DETECTOR_INT8)["export"].get("kept"):
        return DETECTOR_INT8
    return first_existing(DETECTOR_ONNX, DETECTOR)


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
        if not len(x):  # not run: ONNX Runtime 1.30 (the GPU machines' image) fails on an empty batch (ReorderInput)
            return tuple(np.zeros((0, *out.shape[1:]), np.float32) for out in self.session.get_outputs())
        step = self.chunk or len(x)
        parts = [self.session.run(None, {"images": x[i:i + step]}) for i in range(0, len(x), step)]
        probs, boxes = (np.concatenate(outputs) for outputs in zip(*parts))
        return probs, boxes


class OnnxDetector:
    """`detector(frame)` -> (boxes (N, 4) in pixels, scores (N,)), as `TorchDetector` answers."""

    def __init__(self, path: str | Path, device="cpu"):
        self.session = session(path, device)
        self.meta = read_meta(path, self.session)
        if self.meta.get("kind") != "detector":
            raise ModelFileError(f"{path}: a tsloc crop model, not a detector (give it as --model; the detector is "
                                 "models/detector.onnx)")
        self.name = f"onnxruntime {self.meta['export']['precision']}"
        from ..scenes.decode import decode  # NumPy only; imported here so that crop-model stages do not load it
        self.decode, m = decode, self.meta
        self.post = {"score_thresh": m["score_thresh"], "topk": m["topk"], "nms_thresh": m["nms_thresh"],
                     "max_detections": m["max_detections"]}

    def __call__(self, frame: np.ndarray, min_score: float = 0.0, vote_iou: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Detections scoring at least `min_score` (and the file's own threshold): a higher one leaves
        fewer candidates for NMS, and the same detections over it (a box is only suppressed by a
        better one); their boxes voted by the candidates over IoU `vote_iou` (0: not)."""
        h, w = frame.shape[:2]
        scores, distances = self.session.run(None, {"frame": np.ascontiguousarray(frame, dtype=np.uint8)})
        post = self.post | {"score_thresh": max(self.post["score_thresh"], min_score), "vote_iou": vote_iou}
        return self.decode(scores, distances, h, w, self.meta["strides"], **post)
