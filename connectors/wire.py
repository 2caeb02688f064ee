"""The wire formats shared by the sources and by ``streamd produce``.

One image per message: the payload is the encoded image (PNG, JPEG, ...) or raw uint8 pixels
with a ``streamd-shape`` header. Many images per message: an Arrow IPC stream with a binary
``image`` column and optional ``label`` (int), ``task`` (string) and ``content_type`` columns.
Sources split such messages here, so each image gets its own exact position (index/count).
"""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa

from streamd.connectors.base import (ARROW_CONTENT_TYPE, CONTENT_TYPE_HEADER, LABEL_HEADER, RAW_CONTENT_TYPE, SHAPE_HEADER,
                             TASK_HEADER, Position, Record)

IMAGE_FORMATS = ("png", "raw")
MAX_ARROW_ROWS = 10_000     # images per multi-image message; each costs ~1 KB of Record bookkeeping


class DecodeError(ValueError):
    """A record that cannot become an image; ``reason`` is a short snake_case word for metrics."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def header_text(value: object) -> str:
    """A column or header value as header text: bytes are UTF-8 with replacement chars (ingest rejects those)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def image_headers(task: str | int | None, label: int | None) -> dict[str, str]:
    """The optional task/label headers of one image."""
    headers = {}
    if task is not None:
        headers[TASK_HEADER] = str(task)
    if label is not None:
        headers[LABEL_HEADER] = str(int(label))
    return headers


def encode_image(image: np.ndarray, fmt: str) -> tuple[bytes, str, dict[str, str]]:
    """uint8 (H,W) or (H,W,C) pixels -> (payload, content type, extra headers)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if fmt == "raw":
        return image.tobytes(), RAW_CONTENT_TYPE, {SHAPE_HEADER: ",".join(map(str, image.shape))}
    if fmt == "png":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(
            buf, format="PNG", compress_level=1)
        return buf.getvalue(), "image/png", {}
    raise ValueError(f"unknown image format {fmt!r}; choose one of {IMAGE_FORMATS}")


def arrow_message(payloads: list[bytes], content_types: list[str], labels: list[int] | None = None,
                  tasks: list[str] | None = None) -> bytes:
    """Many encoded images -> one Arrow IPC stream (the multi-image message)."""
    columns = {"image": pa.array(payloads, pa.binary()), "content_type": pa.array(content_types, pa.string())}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
    if tasks is not None:
        columns["task"] = pa.array([str(t) for t in tasks], pa.string())
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def is_arrow(record: Record) -> bool:
    return record.content_type.split(";")[0].strip().lower() == ARROW_CONTENT_TYPE


def split_arrow(record: Record) -> list[Record]:
    """One Record per row of an Arrow IPC message; raises ``DecodeError`` (a ValueError) for a malformed one.

    Row headers (label, task, content type) override the message's headers for that image. A message
    without rows is an error (``empty``): it would otherwise vanish without being acked.
    """
    try:
        table = pa.ipc.open_stream(pa.py_buffer(record.payload)).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise DecodeError("corrupt", f"unreadable Arrow IPC stream: {str(exc)[:200]}") from None
    image_type = table.schema.field("image").type if "image" in table.column_names else None
    if image_type is None or not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
        raise DecodeError("corrupt", f"Arrow message needs a binary 'image' column, has {str(table.schema)[:200]}")
    n = table.num_rows
    if n == 0:
        raise DecodeError("empty", "Arrow message without rows")
    if n > MAX_ARROW_ROWS:
        raise DecodeError("too_large", f"Arrow message with {n} rows > {MAX_ARROW_ROWS}")
    rows = {name: table.column(name).to_pylist() for name in ("image", "label", "task", "content_type")
            if name in table.column_names}
    base = {k: v for k, v in record.headers.items() if k != CONTENT_TYPE_HEADER}
    out = []
    for i in range(n):
        headers = dict(base)
        for column, header in (("label", LABEL_HEADER), ("task", TASK_HEADER)):
            if rows.get(column) is not None and rows[column][i] is not None:
                headers[header] = header_text(rows[column][i])
        content_type = (rows.get("content_type") or [None] * n)[i]
        out.append(replace(record, payload=rows["image"][i] or b"", content_type=header_text(content_type or ""),
                           headers=headers, position=Position(record.position.key, record.position.offset, i, n)))
    return out


def kafka_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """str headers -> Kafka headers; raw bytes kept in a str (surrogate escapes, e.g. from file names) go back
    as those bytes, other lone surrogates become '?', so a dead letter with odd headers can always be sent."""
    return [(k, header_bytes(v)) for k, v in headers.items()]


def header_bytes(value: str) -> bytes:
    """A header value as bytes: surrogate escapes become the raw bytes they stand for."""
    try:
        return value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="replace")


def from_kafka_headers(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers -> str dict (undecodable bytes are kept with replacement chars; ingest rejects them)."""
    return {k.lower(): (v or b"").decode("utf-8", errors="replace") for k, v in (headers or [])}
