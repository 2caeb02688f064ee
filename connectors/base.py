"""The contracts between connectors and the daemon.

A source hands out Records in a stable order. The daemon ``ack``s each record once it is
either trained on or dead-lettered; ``position_state()`` describes exactly the acked prefix
(JSON-able) and goes into the checkpoint. After the checkpoint is durable the daemon calls
``commit(state)`` (Kafka offsets, files marked done). On start it calls ``seek(state)`` with the
checkpoint's state so that nothing after the checkpoint is skipped. ``problem()`` says why the
source cannot deliver right now (broker unreachable, topic missing, offsets beyond the log end): the
daemon reports it on /readyz.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Header names on the wire (Kafka headers, sidecar fields, Parquet columns).
TASK_HEADER = "streamd-task"
LABEL_HEADER = "streamd-label"
SHAPE_HEADER = "streamd-shape"      # "H,W" or "H,W,C" for raw uint8 payloads
CONTENT_TYPE_HEADER = "content-type"

RAW_CONTENT_TYPE = "application/x-raw-uint8"
ARROW_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
# A message the source could not parse (e.g. a Kafka record with a non-UTF-8 header key): ingest
# rejects it with reason ``unparseable_record``; the error text travels in PARSE_ERROR_HEADER.
UNPARSEABLE_CONTENT_TYPE = "application/x-streamd-unparseable"
PARSE_ERROR_HEADER = "streamd-parse-error"


@dataclass(frozen=True)
class Position:
    """Where a record came from: a stream key (topic:partition, file path) and an offset in it.

    ``index``/``count`` address one image inside a multi-image message (Arrow IPC batch).
    """

    key: str
    offset: int
    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        sub = f"#{self.index}" if self.count > 1 else ""
        return f"{self.key}@{self.offset}{sub}"


@dataclass(frozen=True)
class Record:
    payload: bytes
    content_type: str
    position: Position
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: float = 0.0

    @property
    def task(self) -> str | None:
        return self.headers.get(TASK_HEADER)

    @property
    def label(self) -> str | None:
        return self.headers.get(LABEL_HEADER)


@runtime_checkable
class Source(Protocol):
    name: str

    def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...

    def ack(self, records: list[Record]) -> None: ...

    def position_state(self) -> dict: ...

    def seek(self, state: dict) -> None: ...

    def commit(self, state: dict) -> bool | None: ...   # False: not committed (None: nothing to commit)

    def lag(self) -> int | None: ...

    def problem(self) -> str | None: ...   # None: healthy; else a one-line reason

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def send(self, record: Record, reason: str) -> None: ...

    def close(self) -> None: ...
