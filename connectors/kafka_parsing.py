"""Consumed Kafka messages -> Records, including records kafka-python cannot parse (never lose a good one).

Why an override: kafka-python (checked against 3.0.12) decodes every header key as strict UTF-8
while it iterates a record batch (``DefaultRecordBatch._read_msg``). One record with a non-UTF-8
header key makes the batch iterator raise ``CorruptRecordError``; the fetch position stays AT that
record, a refetch re-parses the whole batch and raises at the same record again, and the next
``poll()`` after such an error even spins forever inside ``Fetcher.fetched_records`` unless the
position is moved. Seeking to offset+1 does not help either: the refetched batch still contains
the bad record, and every good record after it in the same batch would be unreachable.

``install_parse_guards()`` therefore changes two things in kafka-python (pinned in pyproject.toml):

1. ``DefaultRecordBatch._read_msg``: the strict parse runs first; only when it fails on a header
   key's UTF-8 is the record re-read by ``_read_record_keeping_raw_keys``, which keeps such a key as
   an ``UndecodableHeaderKey`` (a str carrying the raw bytes). The batch parses to its end, no good
   record is lost, and ``KafkaSource`` hands the bad one on as unparseable with its payload.
2. ``Fetcher.PartitionRecords._unpack_records``: any other parse error (a CRC mismatch, a damaged
   record structure) ends the partition's records with an ``UnparseableMessage`` at the offset
   that failed, and the fetch goes on after it, instead of raising out of ``poll()``. Records after
   a damaged one in the same batch cannot be located by kafka-python: each becomes an
   ``UnparseableMessage`` in turn (dead-lettered, never silently skipped).

The source turns both into ``unparseable_record`` Records, so the daemon dead-letters and acks them
like any bad image and the acked prefix moves past them. Record keys and header values are opaque
bytes that kafka-python never decodes, so they need nothing.
"""
from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError, KafkaError
from kafka.record.default_records import DefaultRecord, DefaultRecordBatch
from kafka.record.util import decode_varint

import logging

from streamd.connectors.base import CONTENT_TYPE_HEADER, PARSE_ERROR_HEADER, UNPARSEABLE_CONTENT_TYPE, Position, Record
from streamd.connectors.wire import from_kafka_headers, is_arrow, split_arrow

log = logging.getLogger(__name__)


class UndecodableHeaderKey(str):
    """A header key that is not UTF-8: shown with backslash escapes, ``encode()`` gives the raw bytes
    (kafka-python measures header sizes with ``key.encode("utf-8")``)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> UndecodableHeaderKey:
        key = super().__new__(cls, raw.decode("utf-8", errors="backslashreplace"))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _read_bytes(buffer, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    return bytes(buffer[pos:pos + length]), pos + length


def _header_key(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return UndecodableHeaderKey(raw)


def _read_record_keeping_raw_keys(batch: DefaultRecordBatch) -> DefaultRecord:
    """The v2 record at the batch's read position (Kafka's record layout), header keys as bytes if need be."""
    buffer = batch._buffer
    length, pos = decode_varint(buffer, batch._pos)
    start = pos
    _, pos = decode_varint(buffer, pos)                 # attributes: unused in v2 records
    timestamp_delta, pos = decode_varint(buffer, pos)
    offset_delta, pos = decode_varint(buffer, pos)
    key, pos = _read_bytes(buffer, pos)
    value, pos = _read_bytes(buffer, pos)
    count, pos = decode_varint(buffer, pos)
    headers = []
    for _ in range(max(count, 0)):
        raw_key, pos = _read_bytes(buffer, pos)
        header_value, pos = _read_bytes(buffer, pos)
        headers.append((_header_key(raw_key or b""), header_value))
    if count < 0 or pos - start != length:
        raise CorruptRecordError(f"invalid record at batch offset {batch.base_offset}: bad header count or size")
    batch._pos = pos
    timestamp = (batch.max_timestamp if batch.timestamp_type == DefaultRecordBatch.LOG_APPEND_TIME
                 else batch.first_timestamp + timestamp_delta)
    return DefaultRecord(length, batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value,
                         headers)


class UnparseableMessage(ConsumerRecord):
    """Stands for a record kafka-python could not parse; ``error`` says why."""

    error: str


def _unparseable_message(tp, offset: int, error: Exception) -> UnparseableMessage:
    message = UnparseableMessage(tp.topic, tp.partition, -1, offset, None, None, None, None, [], None, -1, -1, -1)
    message.error = f"{type(error).__name__}: {error}"
    return message


def install_parse_guards() -> None:
    """Installs both guards of the module docstring into kafka-python (idempotent)."""
    if getattr(DefaultRecordBatch._read_msg, "streamd_guard", False):
        return
    _keep_raw_header_keys()
    _stop_at_unparseable_records()


def _keep_raw_header_keys() -> None:
    strict = DefaultRecordBatch._read_msg

    def read_msg(batch, *args, **kwargs):
        start = batch._pos
        try:
            return strict(batch, *args, **kwargs)
        except UnicodeDecodeError:
            if batch.is_control_batch:
                raise
            batch._pos = start
            return _read_record_keeping_raw_keys(batch)

    read_msg.streamd_guard = True
    DefaultRecordBatch._read_msg = read_msg


def _stop_at_unparseable_records() -> None:
    strict = Fetcher.PartitionRecords._unpack_records

    def unpack_records(part, tp, records, key_deserializer, value_deserializer):
        try:
            yield from strict(part, tp, records, key_deserializer, value_deserializer)
        except (CorruptRecordError, KafkaError, ValueError) as exc:
            # next_fetch_offset: right after the last record parsed (records before the fetch
            # offset are re-parsed after a refetch, hence the max)
            offset = max(part.next_fetch_offset, part.fetch_offset)
            part.next_fetch_offset = offset + 1
            yield _unparseable_message(tp, offset, exc)
            part.drain()

    Fetcher.PartitionRecords._unpack_records = unpack_records


def records_of(key: str, message) -> list[Record]:
    """One consumed message -> its Records: one per image, or one unparseable_record."""
    if isinstance(message, UnparseableMessage):
        log.error("unparseable record at %s@%d: %s", key, message.offset, message.error)
        return [unparseable_record(key, message.offset, message.error)]
    raw_keys = [k.raw for k, _ in message.headers or [] if isinstance(k, UndecodableHeaderKey)]
    headers = from_kafka_headers([(k, v) for k, v in message.headers or [] if not isinstance(k, UndecodableHeaderKey)])
    timestamp = (message.timestamp or 0) / 1000.0
    if raw_keys:
        error = f"header key(s) not UTF-8: {', '.join(repr(k) for k in raw_keys)}"
        log.error("unparseable record at %s@%d: %s", key, message.offset, error)
        return [unparseable_record(key, message.offset, error, message.value or b"", headers, timestamp)]
    record = Record(payload=message.value or b"", content_type=headers.pop(CONTENT_TYPE_HEADER, ""),
                    position=Position(key, message.offset), headers=headers, timestamp=timestamp)
    if not is_arrow(record):
        return [record]
    try:
        return split_arrow(record)
    except ValueError as exc:   # handed on whole; ingest.expand dead-letters it with the reason
        log.warning("malformed Arrow message at %s: %s", record.position, exc)
        return [record]


def unparseable_record(key: str, offset: int, error: str, payload: bytes = b"", headers: dict | None = None,
                       timestamp: float = 0.0) -> Record:
    """A Record the ingest stage rejects with reason ``unparseable_record`` (dead-lettered, then acked)."""
    return Record(payload=payload, content_type=UNPARSEABLE_CONTENT_TYPE, position=Position(key, offset),
                  headers={**(headers or {}), PARSE_ERROR_HEADER: error[:500]}, timestamp=timestamp)
