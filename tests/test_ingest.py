"""ingest.decode/expand/parse_*: good images in every mode decode to uint8 (3,S,S); bad ones raise
DecodeError with the reason the daemon dead-letters them under."""
from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from streamd.connectors.base import ARROW_CONTENT_TYPE, LABEL_HEADER, SHAPE_HEADER, TASK_HEADER, Position, Record
from streamd.connectors.wire import arrow_message, encode_image
from streamd.service.ingest import DecodeError, decode, expand, parse_label, parse_task, sniff_content_type

COLOUR = (200, 40, 90)


def record(payload: bytes, content_type: str = "", **headers) -> Record:
    return Record(payload, content_type, Position("test", 7), {k.replace("_", "-"): v for k, v in headers.items()})


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(mode: str = "RGB", size=(20, 12), colour=COLOUR) -> Image.Image:
    return Image.new(mode, size, colour)


def reason_of(rec: Record, size: int = 16, **kw) -> str:
    with pytest.raises(DecodeError) as err:
        decode(rec, size, **kw)
    return err.value.reason


@pytest.mark.parametrize("fmt,content_type", [("PNG", "image/png"), ("BMP", "image/bmp"), ("GIF", "image/gif"),
                                              ("WEBP", "image/webp"), ("JPEG", "image/jpeg")])
def test_each_format_decodes_to_rgb_uint8_at_the_requested_size(fmt, content_type):
    out = decode(record(encoded(solid(), fmt, **({"lossless": True} if fmt == "WEBP" else {})), content_type), 16)
    assert out.shape == (3, 16, 16) and out.dtype.is_floating_point is False and str(out.dtype) == "torch.uint8"
    tolerance = 6 if fmt in ("JPEG", "GIF") else 0
    for channel, value in enumerate(COLOUR):
        assert abs(int(out[channel].float().mean().round()) - value) <= tolerance


@pytest.mark.parametrize("declared", ["", "image/jpeg", "application/octet-stream", "image/png; charset=x"])
def test_content_type_is_sniffed_when_missing_or_wrong(declared):
    out = decode(record(encoded(solid(), "PNG"), declared), 8)
    assert out[:, 0, 0].tolist() == list(COLOUR)


def test_grayscale_rgba_palette_16bit_and_bilevel_become_sensible_rgb():
    gray = decode(record(encoded(solid("L", colour=77), "PNG")), 8)
    assert (gray == 77).all()
    opaque = decode(record(encoded(solid("RGBA", colour=(*COLOUR, 255)), "PNG")), 8)
    assert opaque[:, 0, 0].tolist() == list(COLOUR)
    half = decode(record(encoded(solid("RGBA", colour=(*COLOUR, 128)), "PNG")), 8)   # composited onto black
    assert half[:, 0, 0].tolist() == [round(c * 128 / 255) for c in COLOUR]
    invisible = decode(record(encoded(solid("LA", colour=(250, 0)), "PNG")), 8)
    assert (invisible == 0).all()
    palette = decode(record(encoded(solid().convert("P"), "PNG")), 8)
    assert palette.shape == (3, 8, 8) and palette[:, 0, 0].tolist() != [0, 0, 0]
    sixteen = Image.fromarray(np.full((10, 10), 257 * 100, np.uint16))
    assert (decode(record(encoded(sixteen, "PNG")), 8) == 100).all()
    bilevel = decode(record(encoded(solid("1", colour=1), "PNG")), 8)
    assert (bilevel == 255).all()
    cmyk = decode(record(encoded(solid().convert("CMYK"), "JPEG")), 8)
    assert cmyk.shape == (3, 8, 8)


def test_downscaling_is_antialiased():
    board = np.kron((np.indices((16, 16)).sum(0) % 2) * 255, np.ones((4, 4))).astype(np.uint8)   # 64x64 checks
    out = decode(record(encoded(Image.fromarray(board), "PNG")), 8)
    assert 100 < out.float().mean() < 155 and out.float().std() < 30   # averaged, not sampled 0/255


def test_raw_uint8_with_shape_header():
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    payload, content_type, extra = encode_image(pixels, "raw")
    out = decode(record(payload, content_type, **{SHAPE_HEADER: extra[SHAPE_HEADER]}), 4)
    assert (out.permute(1, 2, 0).numpy() == pixels).all()
    assert decode(record(payload, content_type, **{SHAPE_HEADER: "4,4,3"}), 9).shape == (3, 9, 9)
    gray = decode(record(bytes([9] * 12), "application/x-raw-uint8", **{SHAPE_HEADER: "3,4"}), 4)
    assert (gray == 9).all()
    white = decode(record(b"\xff" * 12, "application/x-raw-uint8", **{SHAPE_HEADER: "2,2,3"}), 2)  # looks like Arrow
    assert (white == 255).all()
    bm = decode(record(b"BM" * 6, "application/x-raw-uint8", **{SHAPE_HEADER: "3,4"}), 4)            # looks like BMP
    assert bm.shape == (3, 4, 4)
    undeclared = decode(record(bytes([5] * 12), "", **{SHAPE_HEADER: "2,2,3"}), 2)
    assert (undeclared == 5).all()


@pytest.mark.parametrize("shape,payload_len", [(None, 12), ("3,x", 12), ("3,4", 11), ("3,4,2", 24), ("0,4", 1),
                                               ("3", 3), ("-3,-4", 12)])
def test_raw_with_missing_or_malformed_shape_is_bad_shape(shape, payload_len):
    headers = {} if shape is None else {SHAPE_HEADER: shape}
    assert reason_of(record(b"\x01" * payload_len, "application/x-raw-uint8", **headers)) == "bad_shape"


def test_corrupt_empty_and_unsupported_inputs():
    assert reason_of(record(b"", "image/png")) == "empty"
    assert reason_of(record(b"\x00garbage bytes that are no image" * 4, "image/png")) == "corrupt"
    assert reason_of(record(b"\x00garbage bytes" * 4, "")) == "corrupt"
    assert reason_of(record(b"hello, world", "text/plain")) == "unsupported_content_type"
    assert reason_of(record(encoded(solid(), "TIFF"), "image/png")) == "unsupported_content_type"
    png = bytearray(encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)), "PNG"))
    png[60:90] = b"\x00" * 30     # damaged compressed data inside IDAT
    assert reason_of(record(bytes(png))) == "corrupt"


def test_truncated_png_and_jpeg():
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = encoded(noisy, fmt)
        assert reason_of(record(data[: len(data) // 2])) == "truncated", fmt


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 1000) + b"IDAT\x78\x9c"   # pixel data cut off


def test_huge_dimensions_are_rejected_from_the_header_before_decoding():
    # Only a header: decoding would fail as truncated, so "too_large" proves the check came first.
    assert reason_of(record(_png_header_only(50, 50)), max_pixels=1_000_000) == "truncated"
    assert reason_of(record(_png_header_only(5000, 5000)), max_pixels=1_000_000) == "too_large"
    assert reason_of(record(_png_header_only(100_000, 100_000))) == "too_large"      # default limit
    assert reason_of(record(encoded(solid(size=(200, 200)), "PNG")), max_pixels=10_000) == "too_large"
    assert reason_of(record(b"\0" * 12, "application/x-raw-uint8", **{SHAPE_HEADER: "4000,4000"}),
                     max_pixels=1000) == "too_large"
    assert decode(record(encoded(solid(size=(100, 100)), "PNG")), 8, max_pixels=10_000).shape == (3, 8, 8)


def test_random_damage_never_raises_anything_but_decode_error():
    rng = random.Random(0)
    noisy = Image.fromarray(np.random.default_rng(2).integers(0, 255, (24, 24, 3), np.uint8))
    originals = [encoded(noisy, f) for f in ("PNG", "JPEG", "GIF", "BMP", "WEBP")]
    decoded = failed = 0
    for _ in range(300):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(1, len(data))] if rng.random() < 0.3 else data
        try:
            assert decode(record(bytes(data)), 8).shape == (3, 8, 8)
            decoded += 1
        except DecodeError as exc:
            assert exc.reason in ("corrupt", "truncated", "too_large", "unsupported_content_type", "empty")
            failed += 1
    assert decoded > 0 and failed > 0


def test_labels_and_tasks_parsed_or_rejected_as_bad_header():
    assert parse_label(record(b"", **{LABEL_HEADER: " 3 "})) == 3
    assert parse_label(record(b"")) == -1
    assert parse_label(record(b"", **{LABEL_HEADER: "-1"})) == -1
    for bad in ("three", "2.5", "-7", "\ufffd"):
        with pytest.raises(DecodeError) as err:
            parse_label(record(b"", **{LABEL_HEADER: bad}))
        assert err.value.reason == "bad_header"
    assert parse_task(record(b"", **{TASK_HEADER: " task-002 "})) == "task-002"
    assert parse_task(record(b"")) is None and parse_task(record(b"", **{TASK_HEADER: " "})) is None
    for bad in ("a\x00b", "x" * 500, "bad\ufffdutf8"):
        with pytest.raises(DecodeError) as err:
            parse_task(record(b"", **{TASK_HEADER: bad}))
        assert err.value.reason == "bad_header"


def test_expand_splits_arrow_messages_into_positioned_records():
    payloads = [encoded(solid(colour=(i * 40, 0, 0)), "PNG") for i in range(3)]
    message = record(arrow_message(payloads, ["image/png"] * 3, labels=[4, 5, 6], tasks=["a", "a", "b"]),
                     ARROW_CONTENT_TYPE)
    parts = expand(message)
    assert [(p.position.offset, p.position.index, p.position.count) for p in parts] == [(7, 0, 3), (7, 1, 3), (7, 2, 3)]
    assert [parse_label(p) for p in parts] == [4, 5, 6] and [p.task for p in parts] == ["a", "a", "b"]
    assert [int(decode(p, 4)[0, 0, 0]) for p in parts] == [0, 40, 80]
    plain = record(payloads[0], "image/png")
    assert expand(plain) == [plain]
    assert sniff_content_type(message.payload) == ARROW_CONTENT_TYPE
    assert reason_of(message) == "unsupported_content_type"       # must be expanded first
    with pytest.raises(DecodeError) as err:
        expand(record(b"\xff\xff\xff\xffnot arrow at all", ARROW_CONTENT_TYPE))
    assert err.value.reason == "corrupt"
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    table = pa.table({"pixels": [b"x"]})
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(DecodeError):
        expand(record(sink.getvalue().to_pybytes(), ARROW_CONTENT_TYPE))


def _arrow_record(**columns) -> Record:
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    table = pa.table(columns)
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return record(sink.getvalue().to_pybytes(), ARROW_CONTENT_TYPE)


def test_arrow_messages_that_would_vanish_flood_or_crash_are_dead_lettered_with_a_reason():
    import pyarrow as pa
    from streamd.connectors.wire import MAX_ARROW_ROWS
    png = encoded(solid(), "PNG")
    for message, reason in [(_arrow_record(image=pa.array([], pa.binary())), "empty"),   # no rows: nothing to ack
                            (_arrow_record(image=pa.array([b"x"] * (MAX_ARROW_ROWS + 1), pa.binary())), "too_large")]:
        with pytest.raises(DecodeError) as err:
            expand(message)
        assert err.value.reason == reason
    (typed,) = expand(_arrow_record(image=pa.array([png]), content_type=pa.array([7]), task=pa.array([b"t\xff"])))
    assert typed.content_type == "7" and decode(typed, 4).shape == (3, 4, 4)     # int column: text, magic decides
    with pytest.raises(DecodeError) as err:
        parse_task(typed)                           # binary task column with bad UTF-8: replacement char, rejected
    assert err.value.reason == "bad_header"


@pytest.mark.parametrize("label", [str(2**31), "9" * 30, "9" * 5000])
def test_labels_beyond_int32_are_bad_headers(label):
    with pytest.raises(DecodeError) as err:
        parse_label(record(b"", **{LABEL_HEADER: label}))
    assert err.value.reason == "bad_header"
    assert parse_label(record(b"", **{LABEL_HEADER: str(2**31 - 1)})) == 2**31 - 1
