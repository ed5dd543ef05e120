"""The Python API beside the command line: `tsloc.load(model)` and its `predict(images)`, answering
with the same records as `tsloc predict` (and `detect(frames)` with `tsloc detect`'s, given a detector).

    import tsloc
    model = tsloc.load("belgiumtsc")                  # a ready model, or a .onnx / .pt file
    tsloc.load("gtsdb").detect("frame.jpg")           # a ready pair: GTSDB's detector, GTSRB's namer
    model.predict("sign.jpg")                         # one record
    model.predict([path, pil_image, array])           # a list of records, in order

With ONNX files it imports neither torch nor torchvision."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..describe import summary
from ..errors import DataError
from .backend import load_backend, load_detector, pick_device
from .predict import MAX_BATCH, prepare, record
from .ready import ready_detector, resolve


class Model:
    """A crop model ready to answer (and a detector, when given). `top_k` and `min_probability`
    are the defaults of each call: under `min_probability` an answer's class is null."""

    def __init__(self, model: str | Path, *, detector: str | Path | None = None, device: str = "auto",
                 top_k: int = 5, min_probability: float = 0.0):
        detector = detector or ready_detector(model)  # a ready pair's name (gtsdb) brings its detector
        files = [resolve(model)] + ([Path(detector)] if detector else [])
        device = pick_device(device, files)
        self.file, self.top_k, self.min_probability = files[0], top_k, min_probability
        self.backend = load_backend(files[0], device)
        self.meta = self.backend.meta
        self.detector = load_detector(files[1], device) if detector else None
        self.detector_file = files[1] if detector else None
        self.finder = self.point = None
        if self.detector is not None:
            from .find import Finder, operating_point
            self.point = operating_point(self.detector, files[1])  # detect's defaults: chosen on validation
            self.finder = Finder(self.detector, self.backend, box=self.point["box"], vote_iou=self.point["vote_iou"])

    def __repr__(self) -> str:
        detector = f", detector={self.detector.name!r}" if self.detector is not None else ""
        return (f"tsloc.Model({self.file.name!r}, {len(self.meta['class_names'])} classes, "
                f"{self.backend.name}{detector})")

    @property
    def info(self) -> dict:
        """What this model is (tsloc.describe.summary): classes, input, recipe, data, test figures."""
        return summary(self.meta)

    def predict(self, images, *, top_k: int | None = None, min_probability: float | None = None,
                errors: str = "raise"):
        """Records for one image or a list of them: paths, encoded bytes, PIL images or uint8 arrays
        (H, W, 3) RGB. A list answers a list, in order; anything else one record. A bad image raises
        DataError naming it (its path, else "image K"); with `errors="skip"` its place in the list
        holds `{"path": ..., "error": "..."}` instead and the rest are answered (as the CLI goes on)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors={errors!r}: 'raise' or 'skip'")
        single = not isinstance(images, (list, tuple))
        items = []
        for k, img in enumerate([images] if single else images):
            try:
                items.append(prepare(img, self.meta["image_size"],
                                     label=None if isinstance(img, (str, Path)) else f"image {k}"))
            except DataError as exc:
                if errors == "raise":
                    raise
                items.append({"path": str(img) if isinstance(img, (str, Path)) else None, "error": str(exc)})
        good = [it for it in items if not isinstance(it, dict)]
        answers = []
        for start in range(0, len(good), MAX_BATCH):
            chunk = good[start:start + MAX_BATCH]
            answers += self.predict_pixels(np.stack([it.pixels for it in chunk]), [it.size for it in chunk],
                                           paths=[it.path for it in chunk], top_k=top_k, min_probability=min_probability)
        answered = iter(answers)
        out = [it if isinstance(it, dict) else next(answered) for it in items]
        return out[0] if single else out

    def predict_pixels(self, pixels: np.ndarray, sizes: list[tuple[int, int]], *, paths: list | None = None,
                       top_k: int | None = None, min_probability: float | None = None) -> list[dict]:
        """Records for images already squashed to the input (N, S, S, 3) whose upright sizes were
        `sizes` (and whose paths, `paths`): `predict`'s batches and the server's."""
        probs, boxes = self.backend(pixels)
        n = len(sizes)
        ks = top_k if isinstance(top_k, (list, tuple)) else [top_k] * n  # one per image (the server's), or one for all
        floors = min_probability if isinstance(min_probability, (list, tuple)) else [min_probability] * n
        return [record(path, size, p, b, self.meta["class_names"], k or self.top_k,
                       self.min_probability if floor is None else floor)
                for path, size, p, b, k, floor in zip(paths or [None] * n, sizes, probs, boxes, ks, floors)]

    def detect(self, frame, *, min_score: float | None = None, min_probability: float | None = None) -> dict:
        """`tsloc detect`'s record for one frame (a path, bytes, a PIL image or an array); the thresholds
        default to the detector's operating point (`.point`: chosen on validation, as `tsloc detect`'s)."""
        if self.finder is None:
            raise ValueError("no detector: tsloc.load(model, detector=FILE)")
        from ..data.images import load_image
        from .detect import record as frame_record
        pixels = np.array(load_image(frame, "frame"))
        return frame_record(Path(frame) if isinstance(frame, (str, Path)) else None, pixels,
                            self.finder(pixels, self.point["min_score"] if min_score is None else min_score),
                            self.meta["class_names"],
                            self.point["min_probability"] if min_probability is None else min_probability)


def load(model: str | Path = "belgiumtsc", **options) -> Model:
    """A model ready to answer: a ready model's name (`belgiumtsc`) or a `.onnx` / `.pt` file
    (options: detector, device, top_k, min_probability; see Model)."""
    return Model(model, **options)
