"""The one image decoder: ingest, the image store, predict, the shifted views and the galleries all
read pixels through here, so a box always refers to the same pixels.

- EXIF orientation is applied (a phone photo stored sideways is read upright), and every box in
  the project refers to the upright image.
- Greyscale is repeated to RGB; palette and alpha images are flattened onto white.
- PPM sizes come from the header (fast, and a truncated file is caught without decoding it).
- An image over Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, 89 million pixels) is
  refused by name before it is decoded (from its header), not decoded with a warning.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

# Images over the limit are refused by the check in open_rgb, in whichever thread decodes them.
# (A warnings filter set around each decode, as before, is process-wide state: with decoding in
# parallel threads one thread's exit restored it while another decoded, and a bomb got through.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF orientations 5-8 turn the image by 90 degrees: the upright size swaps width and height.
_TRANSPOSED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1


def open_rgb(path, name: str | None = None) -> Image.Image:
    """Any image Pillow reads (a path, or a binary file object such as an upload's bytes), upright and
    RGB. Raises DataError naming the file (or `name`) when it is unreadable or too large."""
    label = name or path
    try:
        with Image.open(path) as img:  # reads the header only
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise Image.DecompressionBombError(f"{img.width} x {img.height} pixels is over Pillow's limit of "
                                                   f"{limit} (Image.MAX_IMAGE_PIXELS)")
            img.load()
            return _upright_rgb(img)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{label}: image too large to decode ({exc})") from exc
    except FileNotFoundError as exc:  # the commonest mistakes, said plainly rather than as Pillow says them
        raise DataError(f"{label}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{label}: a folder, not an image file") from exc
    except Image.UnidentifiedImageError as exc:  # its message names a BytesIO object for uploaded bytes
        if isinstance(path, (str, Path)) and Path(path).stat().st_size == 0:
            raise DataError(f"{label}: empty file (0 bytes)") from exc
        raise DataError(f"{label}: unreadable image (not in an image format Pillow reads)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{label}: unreadable image ({exc})") from exc


def load_image(source, name: str | None = None) -> Image.Image:
    """An image from whatever a caller holds, upright and RGB: a path, encoded bytes, a PIL image or
    a uint8 array (H, W, 3) RGB or (H, W) grey. The Python API and the server read through here."""
    if isinstance(source, (str, Path)):
        return open_rgb(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise DataError(f"{name or 'image'}: empty (no bytes)")
        return open_rgb(io.BytesIO(source), name or "image")
    if isinstance(source, Image.Image):
        return _upright_rgb(source)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or source.ndim == 3 and source.shape[2] in (3, 4)) \
                or 0 in source.shape:
            raise DataError(f"{name or 'array'}: an image array is uint8 (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) "
                            f"grey, not {source.dtype} {source.shape}")
        return _upright_rgb(Image.fromarray(source))
    raise DataError(f"{name or 'image'}: not an image: {type(source).__name__} (a path, bytes, a PIL image or a "
                    "uint8 array)")


def _upright_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
    if img.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return img.convert("RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image, checking that the file is complete."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".ppm":
            return _ppm_size(path)
        with Image.open(path) as img:
            img.load()
            w, h = img.size
            return (h, w) if _orientation(img) in _TRANSPOSED else (w, h)
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for a broken file
        raise DataError(f"{path}: unreadable image ({exc})") from exc


def _ppm_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(512)
    fields, pos = [], 0
    while len(fields) < 4:
        while pos < len(head) and head[pos:pos + 1].isspace():
            pos += 1
        if head[pos:pos + 1] == b"#":
            pos = head.find(b"\n", pos) + 1 or len(head)
            continue
        start = pos
        while pos < len(head) and not head[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise DataError(f"{path}: unreadable image (incomplete PPM header)")
        fields.append(head[start:pos])
    if fields[0] != b"P6" or not all(x.isdigit() for x in fields[1:]):
        raise DataError(f"{path}: unreadable image (not a binary PPM: header {b' '.join(fields)!r})")
    width, height, maxval = (int(x) for x in fields[1:])
    if width == 0 or height == 0 or not 0 < maxval < 65536:
        raise DataError(f"{path}: unreadable image (bad PPM header {width}x{height}, maxval {maxval})")
    expected = pos + 1 + width * height * 3 * (1 if maxval < 256 else 2)
    actual = path.stat().st_size
    if actual < expected:
        raise DataError(f"{path}: truncated image ({actual} bytes, its header needs {expected})")
    return width, height


def to_input(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image as the network sees it: squashed to size x size, uint8 (S, S, 3). The one place
    training, evaluation, predict and the scene branch's namer prepare pixels, so they cannot drift apart."""
    return np.asarray(img.resize((size, size), Image.BILINEAR))
