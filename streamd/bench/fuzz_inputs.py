"""``streamd bench fuzz-inputs``: a reproducible corpus of hostile and odd image records, and its verdicts.

``fuzz_records(n, seed)`` yields FuzzCases in a fixed rotation of kinds (cheap kinds 3x as often
as the costly ones: the 4096 x 4096 image, the zlib bombs, the 20,000-row Arrow message); case i
depends only on (seed, i). Each case says what ingest must make of it where that is knowable: one
outcome class per image after ``expand`` ("decodes" or "dead_letter"), or None. The corpus can be
written as files (directory source) or Parquet rows, so a chaos run can feed a real daemon.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamd.connectors.base import ARROW_CONTENT_TYPE, LABEL_HEADER, RAW_CONTENT_TYPE, SHAPE_HEADER, TASK_HEADER, \
    Position, Record
from streamd.connectors.directory import CONTENT_TYPES, SIDECAR_HEADERS, DirectoryWriter
from streamd.connectors.wire import from_kafka_headers, header_bytes
from streamd.bench import _fuzz_bytes as fb
from streamd.service.ingest import DecodeError, decode, expand, parse_label, parse_task

DECODES, DEAD = "decodes", "dead_letter"
_EXTENSIONS = {content_type: ext for ext, content_type in reversed(CONTENT_TYPES.items())}


@dataclass(frozen=True)
class FuzzCase:
    name: str                    # "00042-truncated_png": unique, usable as a file stem
    kind: str
    payload: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    expect: tuple[str, ...] | None = None   # one outcome class per image after expand(); None: unknowable

    def record(self) -> Record:
        return Record(self.payload, self.content_type, Position(self.name, 0), dict(self.headers))


def _png(rng, mode="RGB"):
    return fb.encode(fb.coloured(rng, mode), "PNG")


def _header_case(rng, bad: dict[str, list[str]], good: dict[str, list[str]]):
    name, values, expect = rng.choice([(h, v, DEAD) for h, v in bad.items()] + [(h, v, DECODES) for h, v in good.items()])
    return _png(rng), "image/png", {name: rng.choice(values)}, (expect,)


def _raw_bytes(text: bytes) -> str:
    return text.decode("utf-8", errors="surrogateescape")   # how a non-UTF-8 file name arrives


def _arrow(images, expect, **columns):
    cols = {"image": pa.array(images, pa.binary()), **columns}
    return fb.arrow_stream(cols), ARROW_CONTENT_TYPE, {}, expect


def _arrow_mixed(rng):
    rows = [(_png(rng), DECODES) if rng.random() < 0.5 else (rng.randbytes(rng.randint(1, 300)), DEAD)
            for _ in range(rng.randint(2, 8))]
    return _arrow([r for r, _ in rows], tuple(e for _, e in rows))


def _arrow_nulls(rng):
    rows = [None if rng.random() < 0.4 else _png(rng) for _ in range(rng.randint(2, 8))]
    return _arrow(rows, tuple(DEAD if r is None else DECODES for r in rows))


def _arrow_wrong_types(rng):
    n = rng.randint(1, 4)
    pngs = [_png(rng) for _ in range(n)]
    return rng.choice([
        (fb.arrow_stream({"image": pa.array(["not bytes"] * n)}), ARROW_CONTENT_TYPE, {}, (DEAD,)),
        (fb.arrow_stream({"image": pa.array(list(range(n)), pa.int64())}), ARROW_CONTENT_TYPE, {}, (DEAD,)),
        _arrow(pngs, (DEAD,) * n, label=pa.array(["seven"] * n)),
        _arrow(pngs, (DEAD,) * n, label=pa.array([2.5] * n)),
        _arrow(pngs, (DEAD,) * n, task=pa.array([b"t\xff\xfe"] * n, pa.binary())),
        _arrow(pngs, (DECODES,) * n, content_type=pa.array([5] * n, pa.int64())),
        _arrow(pngs, (DECODES,) * n, label=pa.array([3] * n, pa.int8()), task=pa.array([9] * n)),
    ])


def _arrow_truncated(rng):
    data = _arrow([_png(rng) for _ in range(rng.randint(1, 4))], None)[0]
    return data[: rng.randint(8, len(data) - 9)], ARROW_CONTENT_TYPE, {}, (DEAD,)   # the 8-byte end marker kept out


def _raw_good(rng):
    gray = fb.digit(rng)
    pixels = rng.choice([gray, gray[..., None], np.stack([gray] * 3, 2), np.stack([gray] * 4, 2)])
    return pixels.tobytes(), RAW_CONTENT_TYPE, {SHAPE_HEADER: ",".join(map(str, pixels.shape))}, (DECODES,)


def _raw_bad(rng):
    spec, size = rng.choice([("-3,-4", 12), ("0,4", 4), ("100000,100000,3", 12), ("a,b", 4), ("4,4", 15),
                             ("4,4,5", 80), (",".join(["1"] * 5000), 1), ("9" * 5000, 9), ("4,4,3,1", 48),
                             (None, 16), (" ", 1), ("2e3,2", 12)])
    return fb.noise(rng, (size,)).tobytes(), RAW_CONTENT_TYPE, {} if spec is None else {SHAPE_HEADER: spec}, (DEAD,)


KINDS = {   # kind -> (weight, builder(rng) -> (payload, content type, headers, expect))
    "good_png": (3, lambda rng: (_png(rng, rng.choice(("L", "RGB"))), "image/png",
                                 {LABEL_HEADER: str(rng.randrange(10)), TASK_HEADER: "task-0"}, (DECODES,))),
    "good_jpeg": (3, lambda rng: (fb.encode(fb.coloured(rng, "RGB"), "JPEG"), "image/jpeg", {}, (DECODES,))),
    "truncated_png": (3, lambda rng: (lambda d: (d[: rng.randint(1, len(d) - 24)], "image/png", {}, (DEAD,)))(
        fb.encode(fb.noise(rng, (rng.randint(8, 40),) * 2 + (3,)), "PNG"))),
    "truncated_jpeg": (3, lambda rng: (lambda d: (d[: rng.randint(1, len(d) - 32)], "image/jpeg", {}, (DEAD,)))(
        fb.encode(fb.noise(rng, (rng.randint(8, 40),) * 2 + (3,)), "JPEG", quality=90))),
    "random_bytes": (3, lambda rng: (rng.randbytes(rng.randint(1, 2048)), rng.choice(
        ("", "image/png", "image/jpeg", "application/octet-stream", "text/plain", RAW_CONTENT_TYPE,
         ARROW_CONTENT_TYPE)), {}, (DEAD,))),
    "empty_payload": (3, lambda rng: (b"", rng.choice(("", "image/png", RAW_CONTENT_TYPE, ARROW_CONTENT_TYPE)),
                                      {SHAPE_HEADER: "0,0"} if rng.random() < 0.3 else {}, (DEAD,))),
    "wrong_content_type": (3, lambda rng: (rng.choice((_png(rng), fb.encode(fb.coloured(rng, "RGB"), "JPEG"))),
                                           rng.choice(("image/jpeg", "image/png", "text/plain", "application/json",
                                                       "nonsense/x-what", "!!", "image/gif", "x" * 10240)),
                                           {}, (DECODES,))),
    "declared_raw_or_arrow": (3, lambda rng: (_png(rng), rng.choice((RAW_CONTENT_TYPE, ARROW_CONTENT_TYPE)), {},
                                              (DEAD,))),
    "bomb_png_header": (3, lambda rng: (fb.png_file(*rng.choice(((100_000, 100_000), (2**31 - 1, 1), (9000, 9000))),
                                                    b"\x78\x9c", color_type=2), "image/png", {}, (DEAD,))),
    "bomb_zlib_too_large": (1, lambda rng: (fb.png_file(30_000, 30_000, fb.zlib_zeros(1024)), "image/png", {},
                                            (DEAD,))),
    "bomb_zlib_in_limit": (1, lambda rng: (fb.png_file(fb.BIG_SIDE, fb.BIG_SIDE, fb.zlib_zeros(1024)), "image/png",
                                           {}, (DECODES,))),
    "bomb_gif": (3, lambda rng: (fb.gif_header_only(*rng.choice(((65535, 65535), (20_000, 20_000)))), "image/gif",
                                 {}, (DEAD,))),
    "tiny_1x1": (3, lambda rng: rng.choice([(fb.encode(fb.coloured(rng, "RGB", 1), f), "", {}, (DECODES,))
                                            for f in ("PNG", "JPEG", "GIF", "BMP")] + [
        (b"\x07\x08\x09", RAW_CONTENT_TYPE, {SHAPE_HEADER: "1,1,3"}, (DECODES,))])),
    "big_4096": (1, lambda rng: (fb.big_image(*rng.choice((("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
                                                            ("RGB", "JPEG")))), "", {}, (DECODES,))),
    "png_16bit_gray": (3, lambda rng: (fb.png16(rng), "image/png", {}, (DECODES,))),
    "cmyk_jpeg": (3, lambda rng: (fb.encode(fb.coloured(rng, "CMYK"), "JPEG"), "image/jpeg", {}, (DECODES,))),
    "palette_png_transparent": (3, lambda rng: (_png(rng, "P"), "image/png", {}, (DECODES,))),
    "rgba_png": (3, lambda rng: (_png(rng, "RGBA"), "image/png", {}, (DECODES,))),
    "la_png": (3, lambda rng: (_png(rng, "LA"), "image/png", {}, (DECODES,))),
    "tiff": (3, lambda rng: (fb.encode(fb.coloured(rng, "RGB"), "TIFF"), rng.choice(("image/tiff", "image/png", "")),
                             {}, (DEAD,))),
    "animated_gif": (3, lambda rng: (fb.animated_gif(rng), "image/gif", {}, (DECODES,))),
    "raw_good": (3, _raw_good),
    "raw_bad_shape": (3, _raw_bad),
    "header_replacement_chars": (3, lambda rng: (_png(rng), "image/png", from_kafka_headers(
        [(rng.choice((TASK_HEADER, LABEL_HEADER)), rng.choice((b"\xff\xfe", b"task-\xc3", b"3\x80")))]), (DEAD,))),
    "header_raw_non_utf8": (3, lambda rng: _header_case(
        rng, {TASK_HEADER: [_raw_bytes(b"task-\xff"), _raw_bytes(b"\xe9t\xe9")], LABEL_HEADER: [_raw_bytes(b"3\xff")]},
        {"x-origin": [_raw_bytes(b"cam\xff")]})),
    "header_10kb": (3, lambda rng: _header_case(rng, {TASK_HEADER: ["t" * 10240], LABEL_HEADER: ["1" * 10240]},
                                                {"x-note": ["n" * 10240]})),
    "label_header": (3, lambda rng: _header_case(
        rng, {LABEL_HEADER: ["seven", "2.5", "-5", "1e3", str(2**31), "9" * 30, "0x10", "\x00", "-"]},
        {LABEL_HEADER: ["-1", "0", " 7 ", str(2**31 - 1), "+3", ""]})),
    "task_header": (3, lambda rng: _header_case(rng, {TASK_HEADER: ["a\x00b", "tab\tin", "line\nbreak", "x" * 129]},
                                                {TASK_HEADER: ["task-1", " spaced ", "  ", "\u00e9t\u00e9"]})),
    "arrow_good": (3, lambda rng: (lambda n: _arrow([_png(rng) for _ in range(n)], (DECODES,) * n,
                                                    label=pa.array(list(range(n)), pa.int64())))(rng.randint(1, 6))),
    "arrow_compressed": (3, lambda rng: (fb.arrow_stream({"image": pa.array([_png(rng)] * 3, pa.binary())}, "zstd"),
                                         ARROW_CONTENT_TYPE, {}, (DECODES,) * 3)),
    "arrow_null_image": (3, _arrow_nulls),
    "arrow_wrong_types": (3, _arrow_wrong_types),
    "arrow_missing_image": (3, lambda rng: (fb.arrow_stream({"pixels": pa.array([_png(rng)])}), ARROW_CONTENT_TYPE,
                                            {}, (DEAD,))),
    "arrow_truncated": (3, _arrow_truncated),
    "arrow_garbage_rows": (3, _arrow_mixed),
    "arrow_empty": (3, lambda rng: (fb.arrow_stream({"image": pa.array([], pa.binary())}), ARROW_CONTENT_TYPE, {},
                                    (DEAD,))),
    "arrow_too_many_rows": (1, lambda rng: (fb.arrow_stream({"image": pa.array([b"\x00"] * 20_000, pa.binary())}),
                                            ARROW_CONTENT_TYPE, {}, (DEAD,))),
}
_ROTATION = [kind for kind, (weight, _) in KINDS.items() for _ in range(weight)]


def fuzz_records(n: int, seed: int) -> Iterator[FuzzCase]:
    """n cases; every kind appears once n >= len(_ROTATION), and case i is the same for any n."""
    for i in range(n):
        kind = _ROTATION[i % len(_ROTATION)]
        payload, content_type, headers, expect = KINDS[kind][1](random.Random(f"{seed}:{i}"))
        yield FuzzCase(f"{i:05d}-{kind}", kind, payload, content_type, headers, expect)


def ingest_outcomes(record: Record, image_size: int = 32) -> list[str]:
    """The daemon's ingest path for one message: "decodes" or "dead_letter:<reason>" per image.

    Anything but a DecodeError propagates: that is the failure a fuzz run looks for."""
    try:
        parts = expand(record)
    except DecodeError as e:
        return [f"{DEAD}:{e.reason}"]
    out = []
    for part in parts:
        try:
            parse_task(part), parse_label(part)
            decode(part, image_size)
            out.append(DECODES)
        except DecodeError as e:
            out.append(f"{DEAD}:{e.reason}")
    return out


def summarize(cases: Iterable[FuzzCase], image_size: int = 32) -> dict:
    """Cases per kind, images per outcome ("decodes" / "dead_letter:<reason>"), and the cases whose
    outcome classes differ from what they expect. Raises whatever ingest raises besides DecodeError."""
    kinds, outcomes, mismatches = collections.Counter(), collections.Counter(), []
    for case in cases:
        got = ingest_outcomes(case.record(), image_size)
        kinds[case.kind] += 1
        outcomes.update(got)
        if case.expect is not None and tuple(o.split(":")[0] for o in got) != case.expect:
            mismatches.append(case.name)
    return {"kinds": dict(kinds), "outcomes": dict(sorted(outcomes.items())), "mismatches": mismatches}


def write_to_directory(cases: Iterable[FuzzCase], folder: str | Path) -> dict[str, FuzzCase]:
    """Each case as the file ``<name><ext>`` (extension from the declared content type, ``.bin`` if none
    fits) plus a sidecar with its label/task/shape headers; returns file name -> case."""
    writer, written = DirectoryWriter(folder), {}
    for case in cases:
        rel = case.name + _EXTENSIONS.get(case.content_type, ".bin")
        sidecar = {name: case.headers[h] for name, h in SIDECAR_HEADERS.items() if h in case.headers}
        writer.write(rel, case.payload, sidecar or None)
        written[rel] = case
    return written


def write_to_parquet(cases: Iterable[FuzzCase], path: str | Path, row_group_size: int = 128) -> list[FuzzCase]:
    """One row per case (image, content_type, and label/task as binary so raw non-UTF-8 bytes survive);
    returns the cases in row order. Parquet has no shape column, so raw-pixel cases lose their shape."""
    cases = list(cases)

    def column(header: str) -> pa.Array:
        return pa.array([header_bytes(c.headers[header]) if header in c.headers else None for c in cases], pa.binary())

    pq.write_table(pa.table({"image": pa.array([c.payload for c in cases], pa.binary()),
                             "content_type": pa.array([c.content_type for c in cases], pa.string()),
                             "label": column(LABEL_HEADER), "task": column(TASK_HEADER)}),
                   path, row_group_size=row_group_size)
    return cases


def register(subparsers) -> None:
    p = subparsers.add_parser("fuzz-inputs", help="hostile image records through ingest; optionally written out",
                              description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--directory", type=Path, default=None, help="also write the corpus here as files")
    p.add_argument("--parquet", type=Path, default=None, help="also write the corpus to this Parquet file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Prints the summary as JSON; exit status 1 when a case's outcome differs from what it expects."""
    cases = list(fuzz_records(args.n, args.seed))
    if args.directory:
        write_to_directory(cases, args.directory)
    if args.parquet:
        write_to_parquet(cases, args.parquet)
    summary = summarize(cases, args.image_size)
    print(json.dumps(summary, indent=2))
    return 1 if summary["mismatches"] else 0
