"""Byte builders for the fuzz corpus: real images (sklearn's bundled digits, noise, gradients) in many
modes and formats, and hand-made hostile files (PNG chunks, zlib and GIF bombs, Arrow IPC variants).

The expensive ones (a 4096 x 4096 image, a 1 GiB zlib stream) are built once per process and cached.
"""
from __future__ import annotations

import functools
import io
import random
import struct
import zlib

import numpy as np
import pyarrow as pa
from PIL import Image

BIG_SIDE = 4096
_ZLIB_UNIT = 1 << 20          # the zlib bomb repeats one compressed MiB of zeros


@functools.cache
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images * (255 / 16)).astype(np.uint8)          # (1797, 8, 8)


def digit(rng: random.Random, side: int | None = None) -> np.ndarray:
    """A real handwritten digit as uint8 (side, side), upscaled from 8x8 by repetition."""
    side = side or rng.choice((8, 16, 24, 32, 48))
    image = _digits()[rng.randrange(len(_digits()))]
    return np.kron(image, np.ones((side // 8, side // 8), np.uint8)) if side >= 8 else image[:side, :side]


def noise(rng: random.Random, shape: tuple[int, ...]) -> np.ndarray:
    """Incompressible pixels: any cut of their encoding loses pixel data."""
    return np.random.default_rng(rng.randrange(2**32)).integers(0, 256, shape, np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def coloured(rng: random.Random, mode: str, side: int | None = None) -> Image.Image:
    """A digit in a given Pillow mode: RGB tinted, RGBA/LA with a varying alpha, P with a transparent index."""
    gray = digit(rng, side)
    if mode == "L":
        return Image.fromarray(gray)
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, rng.randrange(256))], axis=2)
    if mode in ("RGBA", "LA"):
        alpha = np.linspace(0, 255, gray.size).reshape(gray.shape).astype(np.uint8)
        base = rgb if mode == "RGBA" else gray[..., None]
        return Image.fromarray(np.concatenate([base, alpha[..., None]], axis=2), mode)
    image = Image.fromarray(rgb)
    if mode == "P":
        image = image.quantize(16)
        image.info["transparency"] = 0
    return image if mode in ("RGB", "P") else image.convert(mode)


def png16(rng: random.Random) -> bytes:
    return encode(Image.fromarray(digit(rng).astype(np.uint16) * 257), "PNG")


def animated_gif(rng: random.Random) -> bytes:
    frames = [Image.fromarray(digit(rng, 16)).convert("P") for _ in range(rng.randint(2, 5))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


@functools.cache
def big_image(mode: str, fmt: str) -> bytes:
    """A 4096 x 4096 gradient in mode RGB, RGBA or LA (small when compressed, full cost when decoded)."""
    ramp = np.linspace(0, 255, BIG_SIDE, dtype=np.uint8)
    x, y = np.broadcast_arrays(ramp[None, :], ramp[:, None])
    bands = {"RGB": (x, y, np.full_like(x, 90)), "RGBA": (x, y, np.full_like(x, 90), y), "LA": (x, y)}[mode]
    image = Image.fromarray(np.ascontiguousarray(np.stack(bands, axis=2)), mode)
    return encode(image, fmt, **({"compress_level": 1} if fmt == "PNG" else {}))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, idat: bytes, color_type: int = 0, depth: int = 8) -> bytes:
    """A PNG from its parts (grayscale by default): headers can lie about what the data holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@functools.cache
def zlib_zeros(mib: int) -> bytes:
    """A valid zlib stream of ``mib`` MiB of zeros (~1 KB per MiB), built without compressing them all:
    after a full flush deflate output no longer depends on earlier input, so one MiB's block repeats."""
    co = zlib.compressobj(9)
    first = co.compress(bytes(_ZLIB_UNIT)) + co.flush(zlib.Z_FULL_FLUSH)
    unit = co.compress(bytes(_ZLIB_UNIT)) + co.flush(zlib.Z_FULL_FLUSH)
    adler = (((mib * _ZLIB_UNIT) % 65521) << 16) | 1          # adler32 of zeros: a stays 1, b counts bytes
    return first + unit * (mib - 1) + b"\x03\x00" + struct.pack(">I", adler)   # final empty block, checksum


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame declare width x height, with almost no pixel data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00\x3b"


def arrow_stream(columns: dict[str, pa.Array], compression: str | None = None) -> bytes:
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()
