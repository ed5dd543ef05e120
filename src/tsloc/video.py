"""Video files through PyAV (FFmpeg's libraries): frames read one at a time, any container and codec
FFmpeg reads, and a video written whole or not at all. Shared by `tsloc detect` on a video and the
synthetic drive (tsloc.scenes.drive). Memory holds a frame or two whatever the video's length."""
from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .errors import DataError
from .io import atomic_path

# What `tsloc detect` treats as a video rather than a frame (FFmpeg reads many more: a file with any
# other suffix is taken for an image).
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv", ".h264", ".hevc"}
CODECS = ("libx264", "h264", "mpeg4")  # the first this FFmpeg build has writes --draw's video
WEBM_CODECS = ("libvpx-vp9", "libvpx")


def is_video(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


class Frame(NamedTuple):
    index: int          # in the video, from 0 (frames skipped by `every` count too)
    time: float         # seconds from the video's start
    image: np.ndarray   # uint8 H x W x 3, RGB


class VideoInfo(NamedTuple):
    width: int
    height: int
    fps: Fraction       # the stream's average frame rate
    frames: int         # as the container declares it (0: it does not say)


def _av():
    try:
        import av
    except ImportError as exc:  # an install without the video extra
        raise DataError("reading video needs PyAV: pip install 'tsloc[video]'") from exc
    return av


@contextlib.contextmanager
def _opened(path: Path):
    """The container, or one line naming the file and what is wrong with it."""
    av = _av()
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a video")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.EOFError as exc:
        raise DataError(f"{path}: no frames: it ends before its first (an empty video, or one cut short)") from exc
    except av.error.FFmpegError as exc:
        raise DataError(f"{path}: not a video FFmpeg can read ({exc.strerror or exc}); a file cut short loses its "
                        "index (MP4's moov atom) and reads as this too") from exc
    try:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream in it")
        yield container
    finally:
        container.close()


def probe(path: str | Path) -> VideoInfo:
    with _opened(Path(path)) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(fps), int(stream.frames or 0))


def read_video(path: str | Path, every: int = 1) -> Iterator[Frame]:
    """Every `every`-th frame of the first video stream, decoded by FFmpeg's threads (the others are
    decoded, as the codec needs, but not converted to RGB). A file that ends before the frames its
    container declares, or holds none, raises DataError after the frames it did hold."""
    av = _av()
    path = Path(path)
    with _opened(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        declared, count, last = int(stream.frames or 0), 0, 0.0
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else (
            container.duration / 1e6 if container.duration else 0.0)
        try:
            for frame in container.decode(stream):
                last = float(frame.time) if frame.time is not None else count / fps
                if count % every == 0:
                    yield Frame(count, last, frame.to_ndarray(format="rgb24"))
                count += 1
        except av.error.FFmpegError as exc:
            raise DataError(f"{path}: unreadable after frame {count} ({exc.strerror or exc}): the file is damaged or "
                            "cut short") from exc
    if count == 0:
        raise DataError(f"{path}: no frames in its video stream (an empty video, or one cut short)")
    if declared and count < declared:
        raise DataError(f"{path}: cut short: {count} of the {declared} frames its container declares")
    if not declared and duration and last + 3 / fps < duration:  # containers that declare a duration, not a count
        raise DataError(f"{path}: cut short: its frames end at {last:.2f} s of the {duration:.2f} s its container "
                        "declares")


class VideoWriter:
    """Frames to a video file (H.264 where FFmpeg has it), written under a temporary name and renamed
    onto `path` only when the `with` block ends without an error."""

    def __init__(self, path: str | Path, fps: Fraction | float, quality: int = 20):
        self.path, self.fps, self.quality = Path(path), Fraction(fps).limit_denominator(1001), quality

    def __enter__(self):
        av = _av()
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self.container = av.open(str(tmp), "w")  # the muxer from the name: the temporary one keeps the suffix
        except (av.error.FFmpegError, ValueError) as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise DataError(f"{self.path}: FFmpeg cannot write this kind of file ({exc}); name it .mp4") from exc
        codecs = WEBM_CODECS if self.path.suffix.lower() == ".webm" else CODECS
        self.codec = next(c for c in codecs if c in av.codecs_available)
        self.stream = None
        return self

    def write(self, image: np.ndarray) -> None:
        av = _av()
        h, w = image.shape[:2]
        if self.stream is None:  # sized by the first frame; yuv420p needs even sides
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            if self.codec == "libx264":
                self.stream.options = {"crf": str(self.quality), "preset": "veryfast"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:self.stream.height, :self.stream.width]),
                                           format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def __exit__(self, kind, exc, tb):
        try:
            if kind is None:
                if self.stream is None:
                    raise DataError(f"{self.path}: no frames to write")
                for packet in self.stream.encode():  # flush the encoder
                    self.container.mux(packet)
        except BaseException as error:
            self.container.close()
            self._atomic.__exit__(type(error), error, error.__traceback__)  # removes the temporary file
            raise
        self.container.close()
        return self._atomic.__exit__(kind, exc, tb)

