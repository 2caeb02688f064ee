"""Kafka source, dead-letter topic and image producer (kafka-python).

Offsets are never auto-committed: the daemon commits only what a durable checkpoint covers.
Positions are ``Position("topic:partition", offset, index, count)``; ``position_state()`` is
``{"offsets": {"topic:partition": first unfinished offset}, "partial": {"topic:partition":
{offset: [done image indices]}}}`` (the second only for partly finished Arrow messages).

Slow steps and ``max_poll_interval_ms``: kafka-python leaves the group when ``poll()`` is not
called within ``max_poll_interval_ms`` (default 300 s). Every ``KafkaSource.poll()`` polls the
consumer, but fetches only while the internal buffer is short (so the buffer holds at most
``max_poll_records`` messages beyond what was asked for; an Arrow message counts once but holds
many images); with a full buffer it polls with all partitions paused, which only heartbeats. Anything slow between two ``poll()`` calls (a checkpoint, a
snapshot) may call ``keepalive()`` to reset the timer the same way.
"""
from __future__ import annotations

import logging
import time
from collections import deque

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from connectors.acks import AckedPrefix
from connectors.base import CONTENT_TYPE_HEADER, Position, Record
from connectors.wire import from_kafka_headers, is_arrow, kafka_headers, split_arrow

log = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "streamd-dead-letter-reason"
DEAD_LETTER_POSITION_HEADER = "streamd-source-position"


def _key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _tp(key: str) -> TopicPartition:
    topic, partition = key.rsplit(":", 1)
    return TopicPartition(topic, int(partition))


class KafkaSource:
    """A consumer-group member; see the module docstring for positions and liveness."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, max_poll_records: int = 256,
                 client_options: dict | None = None, commit_retries: int = 5, commit_timeout_ms: int = 5000):
        options = {"auto_offset_reset": "earliest", **(client_options or {})}
        if options.pop("enable_auto_commit", False):
            raise ValueError("enable_auto_commit must stay off: offsets are committed after checkpoints")
        self.name = f"kafka:{topic}"
        self.topic = topic
        self.max_poll_records = max_poll_records
        self.commit_retries, self.commit_timeout_ms = commit_retries, commit_timeout_ms
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id,
                                       enable_auto_commit=False, max_poll_records=max_poll_records, **options)
        self._buffer: deque[Record] = deque()
        self._acks: dict[str, AckedPrefix] = {}
        self._targets: dict[str, tuple[int, dict]] = {}   # checkpoint positions of not-yet-assigned partitions
        self._fetched_next: dict[str, int] = {}   # offset after the last message fetched, per partition
        self._revoked: set[str] = set()           # revoked, new assignment not yet known
        self._consumer.subscribe([topic], listener=_Rebalance(self))

    # -- Source ------------------------------------------------------------------------------
    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self._poll_consumer(int(timeout_s * 1000), fetch=len(self._buffer) < max_records)
        out, held = [], []
        while self._buffer and len(out) < max_records:
            record = self._buffer.popleft()
            if record.position.key in self._revoked:    # mid-rebalance: may belong to another member
                held.append(record)
                continue
            self._acks.setdefault(record.position.key, AckedPrefix()).handed_out(record.position)
            out.append(record)
        self._buffer.extendleft(reversed(held))
        return out

    def ack(self, records: list[Record]) -> None:
        for record in records:
            tracker = self._acks.get(record.position.key)
            if tracker is not None:
                tracker.ack(record.position)

    def position_state(self) -> dict:
        offsets = {key: offset for key, (offset, _) in self._targets.items()}
        partial = {key: dict(p) for key, (_, p) in self._targets.items() if p}
        for key, tracker in self._acks.items():
            first, done = tracker.state()
            if first is not None:
                offsets[key] = first
                if done:
                    partial[key] = done
        return {"offsets": offsets, "partial": partial}

    def seek(self, state: dict) -> None:
        """Re-reads from the checkpoint's positions: now for assigned partitions, else on assignment."""
        assigned = self._consumer.assignment()
        for key, offset in (state or {}).get("offsets", {}).items():
            target = (int(offset), (state.get("partial") or {}).get(key, {}))
            if _tp(key) in assigned:
                self._apply(key, target)
            else:
                self._targets[key] = target
                self._acks.pop(key, None)

    def commit(self, state: dict) -> bool:
        """Commits the state's offsets of the partitions still assigned, retrying across rebalances.

        Best effort by design: the checkpoint is the truth; a failed commit only means another
        group member (or a restart without the checkpoint) re-reads a few records. Returns success.
        """
        for attempt in range(self.commit_retries):
            assigned = self._consumer.assignment()
            offsets = {_tp(k): OffsetAndMetadata(int(o), "", -1) for k, o in (state or {}).get("offsets", {}).items()
                       if _tp(k) in assigned}
            if not offsets:     # nothing this member owns (revoked partitions are the new owner's)
                return True
            try:
                self._consumer.commit(offsets, timeout_ms=self.commit_timeout_ms)
                return True
            except (RebalanceInProgressError, CommitFailedError) as exc:
                log.info("commit attempt %d failed (%s); completing the rebalance and retrying", attempt + 1, exc)
                self._poll_consumer(200, fetch=False)
            except KafkaError as exc:      # broker or coordinator unavailable: back off, never crash the daemon
                log.info("commit attempt %d failed (%s); retrying", attempt + 1, exc)
                time.sleep(0.2 * (attempt + 1))
        log.warning("offsets not committed after %d attempts; they will be re-read after a restart",
                    self.commit_retries)
        return False

    def lag(self) -> int | None:
        """Records not yet finished on the assigned partitions; None while the broker cannot tell."""
        total = 0
        try:
            for tp in self._consumer.assignment():
                end = self._consumer.highwater(tp)
                if end is None:
                    end = self._consumer.end_offsets([tp], timeout_ms=2000).get(tp)
                tracker = self._acks.get(_key(tp))
                first = tracker.state()[0] if tracker else None
                if first is None:
                    first = self._consumer.position(tp, timeout_ms=2000)
                if end is not None and first is not None:
                    total += max(0, end - first)
        except KafkaError as exc:
            log.debug("lag unknown: %s", exc)
            return None
        return total

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    # -- liveness -----------------------------------------------------------------------------
    def keepalive(self) -> None:
        """Resets the max_poll_interval timer without fetching (call during slow work)."""
        self._poll_consumer(0, fetch=False)

    # -- internals ----------------------------------------------------------------------------
    def _poll_consumer(self, timeout_ms: int, fetch: bool) -> None:
        """One consumer poll; every record it returns goes to the buffer (none is ever dropped)."""
        paused = [] if fetch else list(self._consumer.assignment())
        if paused:
            self._consumer.pause(*paused)
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.max_poll_records)
        finally:
            if paused:
                self._consumer.resume(*[tp for tp in paused if tp in self._consumer.assignment()])
        for tp, messages in batches.items():
            tracker = self._acks.setdefault(_key(tp), AckedPrefix())
            for message in messages:
                for record in self._records(tp, message):
                    if not tracker.skip(record.position):
                        self._buffer.append(record)
                self._fetched_next[_key(tp)] = message.offset + 1

    def _records(self, tp: TopicPartition, message) -> list[Record]:
        headers = from_kafka_headers(message.headers)
        record = Record(payload=message.value or b"", content_type=headers.pop(CONTENT_TYPE_HEADER, ""),
                        position=Position(_key(tp), message.offset), headers=headers,
                        timestamp=(message.timestamp or 0) / 1000.0)
        if not is_arrow(record):
            return [record]
        try:
            return split_arrow(record)
        except ValueError as exc:   # handed on whole; ingest.expand dead-letters it with the reason
            log.warning("malformed Arrow message at %s: %s", record.position, exc)
            return [record]

    def _apply(self, key: str, target: tuple[int, dict]) -> None:
        offset, partial = target
        self._consumer.seek(_tp(key), offset)
        self._acks[key] = AckedPrefix(offset, partial)
        self._drop_buffered({key})
        self._fetched_next.pop(key, None)
        self._targets.pop(key, None)

    def _drop_buffered(self, keys: set[str]) -> None:
        self._buffer = deque(r for r in self._buffer if r.position.key not in keys)

    def _on_revoked(self, revoked) -> None:
        """Holds the revoked partitions' records back until the new assignment is known."""
        self._revoked |= {_key(tp) for tp in revoked}

    def _on_assigned(self, assigned) -> None:
        """Partitions gone to another member: forget their buffered records and acks (the new owner
        resumes at the group's committed offset; this member never commits for them). Partitions
        kept: continue right after what was fetched, whatever position the client kept."""
        keys = {_key(tp) for tp in assigned}
        gone = self._revoked - keys
        self._drop_buffered(gone)
        for key in gone:
            self._acks.pop(key, None)
            self._fetched_next.pop(key, None)
        self._revoked = set()
        for key in keys:
            if key in self._targets:
                self._apply(key, self._targets[key])
            elif key in self._fetched_next:
                self._consumer.seek(_tp(key), self._fetched_next[key])


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource):
        self.source = source

    def on_partitions_revoked(self, revoked):
        self.source._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.source._on_assigned(assigned)


class KafkaSink:
    """Produces encoded images (payload + headers) to a topic; used by ``streamd produce`` and tests."""

    def __init__(self, bootstrap_servers: str, topic: str, client_options: dict | None = None):
        options = {"max_request_size": 16 * 1024 * 1024, "linger_ms": 5, **(client_options or {})}
        self.topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **options)

    def send(self, payload: bytes, headers: dict[str, str], key: bytes | None = None, partition: int | None = None,
             wait: bool = False) -> None:
        future = self._producer.send(self.topic, value=payload, key=key, partition=partition,
                                     headers=kafka_headers(headers))
        if wait:
            future.get(timeout=30)

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.close()


class KafkaDeadLetter:
    """Dead-letter topic: the original payload and headers plus the reason and source position.

    Each send waits for the broker's ack, because the record is acked (and its offset may be
    committed) right after: an in-flight dead letter must not be lost in a crash.
    """

    def __init__(self, bootstrap_servers: str, topic: str, client_options: dict | None = None):
        self._sink = KafkaSink(bootstrap_servers, topic, client_options)

    def send(self, record: Record, reason: str) -> None:
        headers = {**record.headers, CONTENT_TYPE_HEADER: record.content_type,
                   DEAD_LETTER_REASON_HEADER: reason, DEAD_LETTER_POSITION_HEADER: str(record.position)}
        self._sink.send(record.payload, headers, wait=True)

    def close(self) -> None:
        self._sink.close()


def committed_offsets(bootstrap_servers: str, group_id: str, topic: str, timeout_s: float = 10.0) -> dict[str, int]:
    """The offsets a group has committed for a topic, as ``{"topic:partition": offset}``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while partitions is None and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        out = {}
        for p in sorted(partitions or ()):
            offset = consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                out[f"{topic}:{p}"] = offset
        return out
    finally:
        consumer.close(autocommit=False)
