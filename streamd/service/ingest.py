"""Record bytes -> uint8 RGB tensors (3,S,S), or a DecodeError with a short reason.

The content type is a hint: the magic bytes decide (a PNG sent as image/jpeg still decodes),
except for raw uint8 pixels, which have no magic and are known by their declaration or shape header.
Image dimensions are checked from the header BEFORE the pixels are decoded, so a
decompression bomb costs nothing. Alpha is composited onto black (premultiplied), 16-bit and
float images are scaled to 8 bit, palettes and grayscale are expanded to RGB, animations
give their first frame. Resizing squashes to S x S with Pillow's antialiased filter, BEFORE
other mode conversions (only palette and bilevel images are widened first), so a big image is not
copied at full size in a wider mode: the 4096 x 4096 images of the fuzz corpus, RGBA included, add
129 MiB to a process's peak (decoded image + Pillow's premultiplied copy); converting first added
401 MiB. Nothing here raises anything but DecodeError for bad input, and every reason it carries
is listed in DEAD_LETTER_REASONS.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from streamd.connectors.base import (ARROW_CONTENT_TYPE, PARSE_ERROR_HEADER, RAW_CONTENT_TYPE, SHAPE_HEADER,
                             UNPARSEABLE_CONTENT_TYPE, Record)
from streamd.connectors.wire import DecodeError, split_arrow

__all__ = ["DEAD_LETTER_REASONS", "DecodeError", "decode", "expand", "parse_label", "parse_task",
           "sniff_content_type"]

# Every reason a record can be dead-lettered under (the daemon pre-creates one metric series each).
# ``unparseable_record``: a message the source's client could not parse at all (no payload to decode).
DEAD_LETTER_REASONS: tuple[str, ...] = ("bad_header", "bad_shape", "corrupt", "empty", "too_large", "truncated",
                                        "unparseable_record", "unsupported_content_type")
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024    # a 8192 x 8192 image; more is treated as a bomb
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/bmp": "BMP",
               "image/gif": "GIF"}
_MAX_TASK_LEN = 128
_MAX_LABEL = 2**31 - 1       # labels become an int64 tensor; larger ones are a producer bug
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def sniff_content_type(payload: bytes) -> str | None:
    """The content type the magic bytes say, or None."""
    head = payload[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith(b"\xff\xff\xff\xff") or head.startswith(b"ARROW1"):
        return ARROW_CONTENT_TYPE
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"         # recognised, but not accepted
    return None


def _declared(record: Record) -> str:
    ct = record.content_type.split(";")[0].strip().lower()
    return {"image/jpg": "image/jpeg", "image/x-ms-bmp": "image/bmp"}.get(ct, ct)


def decode(record: Record, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 (3, image_size, image_size); raises DecodeError(reason)."""
    if not record.payload:
        raise DecodeError("empty", "zero-size payload")
    declared = _declared(record)
    kind = sniff_content_type(record.payload)
    # Raw pixels can start like a magic number (white pixels look like Arrow, "BM" like a bitmap):
    # a raw declaration wins, and bytes no magic claims are raw when they come with a shape.
    if declared == RAW_CONTENT_TYPE or (kind is None and SHAPE_HEADER in record.headers):
        pixels = _raw_pixels(record, max_pixels)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    elif kind == ARROW_CONTENT_TYPE or (kind is None and declared == ARROW_CONTENT_TYPE):
        raise DecodeError("unsupported_content_type", "a multi-image Arrow message: expand() it first")
    elif kind is None:
        if declared in PIL_FORMATS or declared in ("", "application/octet-stream"):
            raise DecodeError("corrupt", f"not a recognised image (declared {declared[:80] or 'nothing'})")
        raise DecodeError("unsupported_content_type", declared[:80])
    elif kind not in PIL_FORMATS:
        raise DecodeError("unsupported_content_type", kind)
    else:
        image = _open_pil(record.payload, kind, max_pixels, image_size)
    return _to_tensor(image, image_size)


def _raw_pixels(record: Record, max_pixels: int) -> np.ndarray:
    spec = record.headers.get(SHAPE_HEADER, "")
    try:
        shape = tuple(int(v) for v in spec.split(","))
    except ValueError:
        raise DecodeError("bad_shape", f"{SHAPE_HEADER} {spec[:40]!r} is not 'H,W' or 'H,W,C'") from None
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) <= 0 or shape[2] not in (1, 3, 4):
        raise DecodeError("bad_shape", f"{SHAPE_HEADER} {spec[:40]!r}: need H,W[,C] with C in 1, 3, 4")
    if shape[0] * shape[1] > max_pixels:
        raise DecodeError("too_large", f"{shape[0]}x{shape[1]} pixels > {max_pixels}")
    if shape[0] * shape[1] * shape[2] != len(record.payload):
        raise DecodeError("bad_shape", f"shape {shape} needs {np.prod(shape)} bytes, payload has {len(record.payload)}")
    return np.frombuffer(record.payload, np.uint8).reshape(shape)


def _open_pil(payload: bytes, kind: str, max_pixels: int, image_size: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our max_pixels decides
            image = Image.open(io.BytesIO(payload), formats=[PIL_FORMATS[kind]])   # reads the header only
    except Image.DecompressionBombError as exc:     # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)
        raise DecodeError("too_large", str(exc)) from None
    except Exception as exc:   # noqa: BLE001 -- Pillow raises many types for bad headers
        raise DecodeError(_failure_reason(exc), f"{kind}: {str(exc)[:200]}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError("too_large", f"{width}x{height} pixels > {max_pixels}")
    if width == 0 or height == 0:
        raise DecodeError("corrupt", f"{width}x{height} image")
    try:
        if kind == "image/jpeg":
            image.draft("RGB", (image_size, image_size))   # DCT-domain downscale: big JPEGs decode fast
        image.load()
    except Exception as exc:   # noqa: BLE001
        raise DecodeError(_failure_reason(exc), f"{kind}: {str(exc)[:200]}") from None
    return image


def _failure_reason(exc: Exception) -> str:
    return "truncated" if isinstance(exc, EOFError) or "truncat" in str(exc).lower() else "corrupt"


def _resizable(image: Image.Image) -> Image.Image:
    """Modes Pillow cannot resize with a filter (palette, bilevel) become RGB(A)/L; others stay as they are."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.convert("L") if image.mode == "1" else image


def _depth_scale(image: Image.Image) -> float:
    """16-bit images, and 32-bit ones whose values pass 255, are scaled down to 8 bit (judged on all pixels)."""
    if image.mode not in _HIGH_DEPTH:
        return 1.0
    return 257.0 if image.mode.startswith("I;16") or image.getextrema()[1] > 255 else 1.0


def _rgb_pixels(image: Image.Image, scale: float) -> np.ndarray:
    """uint8 (H,W,3) of an already resized image: high depths scaled, alpha composited onto black."""
    if image.mode in _HIGH_DEPTH:
        pixels = np.asarray(image, dtype=np.float32)
        return np.repeat(np.clip(pixels / scale + 0.5, 0, 255).astype(np.uint8)[..., None], 3, 2)
    if image.mode in ("La", "RGBa"):                    # premultiplied already: alpha is dropped
        image = image.convert("LA" if image.mode == "La" else "RGBA")
    if image.mode in ("LA", "RGBA"):
        pixels = np.asarray(image, dtype=np.uint16)
        colour = (pixels[..., :-1] * pixels[..., -1:] + 127) // 255
        return np.broadcast_to(colour, (*colour.shape[:2], 3)).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """Resizes BEFORE converting, so a big image is never copied at full size in a wider mode."""
    try:
        image = _resizable(image)
        scale = _depth_scale(image)
        if image.size != (image_size, image_size):
            # Pillow premultiplies alpha while resampling LA/RGBA, so transparent pixels do not bleed.
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = _rgb_pixels(image, scale)
    except Exception as exc:   # noqa: BLE001 -- odd modes or damaged data discovered late
        raise DecodeError("corrupt", str(exc)[:200]) from None
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).contiguous()   # small writable copy


def expand(record: Record) -> list[Record]:
    """One Record per image (at least one): an Arrow IPC message is split (index/count set), others pass as is;
    a message its source could not parse raises DecodeError('unparseable_record')."""
    if _declared(record) == UNPARSEABLE_CONTENT_TYPE:
        raise DecodeError("unparseable_record", record.headers.get(PARSE_ERROR_HEADER, ""))
    return split_arrow(record) if _declared(record) == ARROW_CONTENT_TYPE else [record]


def parse_label(record: Record) -> int:
    """The integer class label, -1 when there is none; DecodeError('bad_header') when malformed."""
    value = (record.label or "").strip()
    if not value:
        return -1
    try:
        label = int(value)
    except ValueError:
        raise DecodeError("bad_header", f"label {value[:40]!r} is not an integer") from None
    if not -1 <= label <= _MAX_LABEL:
        raise DecodeError("bad_header", f"label {value[:40]} is out of range -1..{_MAX_LABEL}")
    return label


def parse_task(record: Record) -> str | None:
    """The task id from the header (None when absent); DecodeError('bad_header') when malformed."""
    value = record.task
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > _MAX_TASK_LEN or not value.isprintable() or "\ufffd" in value:
        raise DecodeError("bad_header", f"task {value[:40]!r} is not a short printable string")
    return value
