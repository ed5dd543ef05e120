"""The Python API beside the command line: `tsloc.load(model)` and its `predict(images)`, answering
with the same records as `tsloc predict` (and `detect(frames)` with `tsloc detect`'s, given a detector).

    import tsloc
    model = tsloc.load("belgiumtsc")                  # a ready model, or a .onnx / .pt file
    model.predict("sign.jpg")                         # one record
    model.predict([path, pil_image, array])           # a list of records, in order

With ONNX files it imports neither torch nor torchvision."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..describe import summary
from .backend import load_backend, load_detector, pick_device
from .predict import MAX_BATCH, prepare, record
from .ready import resolve


class Model:
    """A crop model ready to answer (and a detector, when given). `top_k` and `min_probability`
    are the defaults of each call: under `min_probability` an answer's class is null."""

    def __init__(self, model: str | Path, *, detector: str | Path | None = None, device: str = "auto",
                 top_k: int = 5, min_probability: float = 0.0):
        files = [resolve(model)] + ([Path(detector)] if detector else [])
        device = pick_device(device, files)
        self.file, self.top_k, self.min_probability = files[0], top_k, min_probability
        self.backend = load_backend(files[0], device)
        self.meta = self.backend.meta
        self.detector = load_detector(files[1], device) if detector else None
        self.finder = None
        if self.detector is not None:
            from .find import Finder
            self.finder = Finder(self.detector, self.backend)

    @property
    def info(self) -> dict:
        """What this model is (tsloc.describe.summary): classes, input, recipe, data, test figures."""
        return summary(self.meta)

    def predict(self, images, *, top_k: int | None = None, min_probability: float | None = None):
        """Records for one image or a list of them: paths, encoded bytes, PIL images or uint8 arrays
        (H, W, 3) RGB. A list answers a list, in order; anything else one record."""
        single = not isinstance(images, (list, tuple))
        items = [prepare(img, self.meta["image_size"], label=f"image {k}")
                 for k, img in enumerate([images] if single else images)]
        out = []
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start:start + MAX_BATCH]
            out += self.predict_pixels(np.stack([it.pixels for it in chunk]), [it.size for it in chunk],
                                       paths=[it.path for it in chunk], top_k=top_k, min_probability=min_probability)
        return out[0] if single else out

    def predict_pixels(self, pixels: np.ndarray, sizes: list[tuple[int, int]], *, paths: list | None = None,
                       top_k: int | None = None, min_probability: float | None = None) -> list[dict]:
        """Records for images already squashed to the input (N, S, S, 3) whose upright sizes were
        `sizes` (and whose paths, `paths`): `predict`'s batches and the server's."""
        probs, boxes = self.backend(pixels)
        k = top_k or self.top_k
        floor = self.min_probability if min_probability is None else min_probability
        return [record(path, size, p, b, self.meta["class_names"], k, floor)
                for path, size, p, b in zip(paths or [None] * len(sizes), sizes, probs, boxes)]

    def detect(self, frame, *, min_score: float = 0.3, min_probability: float = 0.5) -> dict:
        """`tsloc detect`'s record for one frame (a path, bytes, a PIL image or an array)."""
        if self.finder is None:
            raise ValueError("no detector: tsloc.load(model, detector=FILE)")
        from ..data.images import load_image
        from .detect import record as frame_record
        pixels = np.array(load_image(frame, "frame"))
        return frame_record(Path(frame) if isinstance(frame, (str, Path)) else None, pixels,
                            self.finder(pixels, min_score), self.meta["class_names"], min_probability)


def load(model: str | Path = "belgiumtsc", **options) -> Model:
    """A model ready to answer: a ready model's name (`belgiumtsc`) or a `.onnx` / `.pt` file
    (options: detector, device, top_k, min_probability; see Model)."""
    return Model(model, **options)
