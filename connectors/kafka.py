"""Kafka source (kafka-python); the producers live in connectors/kafka_sink.py.

Offsets are never auto-committed: the daemon commits only what a durable checkpoint covers.
Positions are ``Position("topic:partition", offset, index, count)``; ``position_state()`` is
``{"offsets": {"topic:partition": first unfinished offset}, "partial": {"topic:partition":
{offset: [done image indices]}}, "topic_id": uuid}`` ("partial" only for partly finished Arrow
messages; "topic_id", the topic the offsets belong to, once known).

Liveness: kafka-python leaves the group when ``poll()`` is not called within
``max_poll_interval_ms``. Every ``KafkaSource.poll()`` polls the consumer, but fetches only while
the internal buffer is short; with a full buffer it polls with all partitions paused, which
fetches nothing. Between two ``poll()`` calls a ``KeepAliveThread`` does the same paused poll
whenever the consumer sat idle for a quarter of ``max_poll_interval_ms``, so no step is too slow.
One lock serializes every use of the consumer (it is not thread-safe) and of the source's state
(rebalance callbacks may run on that thread).

Group joins: a join that finished between two polls is used, not restarted, and a join started for a
metadata change that went away meanwhile is still finished (connectors/kafka_group.py).
Safety: the input topic is never auto-created; records kafka-python cannot parse become
``unparseable_record`` dead letters (connectors/kafka_parsing.py); start offsets past the log end
or of a deleted and recreated topic (another topic id) are caught (connectors/kafka_offsets.py), also
while the source reads: the health check refreshes the metadata, and partitions kept across a
rebalance are checked again.
``problem()`` reports what keeps the source from reading.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from streamd.connectors.acks import AckedPrefix
from streamd.connectors.base import Record
from streamd.connectors.kafka_group import install_join_fix
from streamd.connectors.kafka_keepalive import KeepAliveThread
from streamd.connectors.kafka_offsets import (OFFSET_POLICIES, BeyondLogEnd, TopicRecreated, beyond_log_end, topic_id,
                                      topic_recreated)
from streamd.connectors.kafka_parsing import install_parse_guards, records_of
from streamd.connectors.kafka_sink import (DEAD_LETTER_POSITION_HEADER, DEAD_LETTER_REASON_HEADER,  # noqa: F401 -- re-exported
                                   KafkaDeadLetter, KafkaSink)

log = logging.getLogger(__name__)
install_parse_guards()
install_join_fix()

HEALTH_CHECK_S = 2.0


def _locked(method):
    """Runs a method under the source's lock and marks the consumer as just used."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            finally:
                self._last_used = time.monotonic()
    return run


def _key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _tp(key: str) -> TopicPartition:
    topic, partition = key.rsplit(":", 1)
    return TopicPartition(topic, int(partition))


class KafkaSource:
    """A consumer-group member; see the module docstring for positions, liveness and safety."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, max_poll_records: int = 256,
                 client_options: dict | None = None, commit_retries: int = 5, commit_timeout_ms: int = 5000,
                 on_offsets_beyond_log_end: str = "fail", on_offsets_invalid: Callable[[], None] | None = None):
        options = {"auto_offset_reset": "earliest", **(client_options or {})}
        if options.pop("enable_auto_commit", False):
            raise ValueError("enable_auto_commit must stay off: offsets are committed after checkpoints")
        if options.pop("allow_auto_create_topics", False):
            raise ValueError("allow_auto_create_topics must stay off: a missing input topic is a problem to report")
        if on_offsets_beyond_log_end not in OFFSET_POLICIES:
            raise ValueError(f"on_offsets_beyond_log_end must be one of {OFFSET_POLICIES}, "
                             f"not {on_offsets_beyond_log_end!r}")
        self.name = f"kafka:{topic}"
        self.topic = topic
        self.max_poll_records = max_poll_records
        self.commit_retries, self.commit_timeout_ms = commit_retries, commit_timeout_ms
        self.on_offsets_beyond_log_end, self.on_offsets_invalid = on_offsets_beyond_log_end, on_offsets_invalid
        self.offsets_invalid_total = 0
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id,
                                       enable_auto_commit=False, allow_auto_create_topics=False,
                                       max_poll_records=max_poll_records, **options)
        # kafka-python 3.0.12 drops allow_auto_create_topics on its way to the metadata requests
        # (KafkaConnectionManager builds ClusterMetadata without it): set it where it is used.
        self._consumer._cluster.config["allow_auto_create_topics"] = False
        self._lock = threading.RLock()
        self._last_used = time.monotonic()
        self._buffer: deque[Record] = deque()
        self._acks: dict[str, AckedPrefix] = {}
        self._targets: dict[str, tuple[int, dict]] = {}   # checkpoint positions of not-yet-assigned partitions
        self._fetched_next: dict[str, int] = {}   # offset after the last message fetched, per partition
        self._revoked: set[str] = set()           # revoked, new assignment not yet known
        self._unchecked: dict[str, int | None] = {}   # start offset (None: committed) not yet compared with the log end
        self._held: dict[str, str] = {}           # partitions not read, with the reason ("fail" policy)
        self._health: str | None = None           # broker or topic trouble seen by check_health()
        self._topic_id: str | None = None         # id of the topic the positions' offsets belong to
        self._consumer.subscribe([topic], listener=_Rebalance(self))
        idle_s = options.get("max_poll_interval_ms", 300000) / 4000
        self._keepalive = KeepAliveThread(self, idle_s=idle_s, health_s=HEALTH_CHECK_S, name=self.name)
        self._keepalive.start()

    # -- Source ------------------------------------------------------------------------------
    @_locked
    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self._poll_consumer(int(timeout_s * 1000), fetch=len(self._buffer) < max_records)
        self._check_new_partitions()
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

    @_locked
    def ack(self, records: list[Record]) -> None:
        for record in records:
            tracker = self._acks.get(record.position.key)
            if tracker is not None:
                tracker.ack(record.position)

    @_locked
    def position_state(self) -> dict:
        offsets = {key: offset for key, (offset, _) in self._targets.items()}
        partial = {key: dict(p) for key, (_, p) in self._targets.items() if p}
        for key, tracker in self._acks.items():
            first, done = tracker.state()
            if first is not None:
                offsets[key] = first
                if done:
                    partial[key] = done
        return {"offsets": offsets, "partial": partial, **({"topic_id": self._topic_id} if self._topic_id else {})}

    @_locked
    def seek(self, state: dict) -> None:
        """Re-reads from the checkpoint's positions: now for assigned partitions, else on assignment."""
        assigned = self._consumer.assignment()
        self._topic_id = (state or {}).get("topic_id")
        for key, offset in (state or {}).get("offsets", {}).items():
            target = (int(offset), (state.get("partial") or {}).get(key, {}))
            if _tp(key) in assigned:
                self._apply(key, target)
            else:
                self._targets[key] = target
                self._acks.pop(key, None)

    @_locked
    def commit(self, state: dict) -> bool:
        """Commits the state's offsets of the partitions still assigned (and read), retrying across rebalances.

        Best effort by design: the checkpoint is the truth; a failed commit only means another
        group member (or a restart without the checkpoint) re-reads a few records. Returns success.
        A held partition is never committed: its offsets belong to a topic that no longer exists.
        """
        for attempt in range(self.commit_retries):
            readable = {tp for tp in self._consumer.assignment() if _key(tp) not in self._held}
            offsets = {_tp(k): OffsetAndMetadata(int(o), "", -1) for k, o in (state or {}).get("offsets", {}).items()
                       if _tp(k) in readable}
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

    @_locked
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

    def problem(self) -> str | None:
        """What keeps the source from reading (None: healthy): held partitions, else broker/topic trouble."""
        with self._lock:
            if self._held:
                return "; ".join(self._held[k] for k in sorted(self._held))
            return self._health

    def close(self) -> None:
        self._keepalive.stop()
        with self._lock:
            self._consumer.close(autocommit=False)

    # -- liveness (KeepAliveThread) -----------------------------------------------------------
    def idle_seconds(self) -> float:
        return time.monotonic() - self._last_used

    @_locked
    def keepalive(self) -> None:
        """Resets the max_poll_interval timer without fetching; a pending rebalance may complete."""
        self._poll_consumer(100, fetch=False)

    @_locked
    def check_health(self) -> None:
        """One broker round trip: is the topic there and its leader reachable? Sets what problem() says.

        The topic's partitions come from the consumer's metadata cache (the consumer refreshes it for
        its subscription): ``partitions_for_topic()`` would block without a timeout on a dead broker.

        It also asks for a metadata refresh (done on kafka-python's IO thread, without blocking): the
        consumer refreshes on its own only every ``metadata_max_age_ms`` (5 min), and until then it
        would not see that the topic was deleted and recreated under it (a new topic id) and would go
        on fetching the new topic at the old topic's offsets, silently skipping its first records.
        With the refresh, ``_check_topic_id`` sees the new id within about HEALTH_CHECK_S. Records
        of the new topic fetched before that are not skipped either under "reset_to_log_start": the
        partition is read again from its first offset, so they are handed out twice. Under "fail"
        they are handed out before the partition is held.
        """
        try:
            self._consumer._cluster.request_update()
            partitions = self._consumer._cluster.partitions_for_topic(self.topic)
            if not partitions:
                self._health = (f"topic {self.topic!r} not found (missing, it is never auto-created; "
                                "or the broker is unreachable)")
                return
            self._consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions], timeout_ms=1000)
            self._health = None
        except KafkaError as exc:
            self._health = f"Kafka broker unreachable: {type(exc).__name__}: {exc}"

    # -- internals ----------------------------------------------------------------------------
    def _poll_consumer(self, timeout_ms: int, fetch: bool) -> None:
        """One consumer poll; every record it returns goes to the buffer (none is ever dropped).

        kafka-python raises out of ``poll()`` when the broker is gone (the coordinator lookup's
        metadata refresh fails with ECONNREFUSED): a retriable error here is an outage to wait out
        (reported by ``problem()``), not a reason to stop the daemon."""
        paused = [] if fetch else [tp for tp in self._consumer.assignment() if _key(tp) not in self._held]
        if paused:
            self._consumer.pause(*paused)
        started = time.monotonic()
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.max_poll_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            if self._health is None:
                log.warning("Kafka broker unreachable (%s: %s); retrying", type(exc).__name__, exc)
            self._health = f"Kafka broker unreachable: {type(exc).__name__}: {exc}"
            time.sleep(max(0.0, timeout_ms / 1000 - (time.monotonic() - started)))
            return
        finally:
            if paused:
                self._consumer.resume(*[tp for tp in paused if tp in self._consumer.assignment()])
        for tp, messages in batches.items():
            tracker = self._acks.setdefault(_key(tp), AckedPrefix())
            for message in messages:
                for record in records_of(_key(tp), message):
                    if not tracker.skip(record.position):
                        self._buffer.append(record)
                self._fetched_next[_key(tp)] = message.offset + 1

    def _apply(self, key: str, target: tuple[int, dict]) -> None:
        offset, partial = target
        self._consumer.seek(_tp(key), offset)
        self._acks[key] = AckedPrefix(offset, partial)
        self._drop_buffered({key})
        self._fetched_next.pop(key, None)
        self._targets.pop(key, None)
        self._held.pop(key, None)
        self._unchecked[key] = offset

    def _check_new_partitions(self) -> None:
        """After a poll, outside rebalance callbacks: start offsets of another topic id or past the log
        end get the policy."""
        self._check_topic_id()
        for key, start in list(self._unchecked.items()):
            try:
                case = beyond_log_end(self._consumer, _tp(key), start)
            except KafkaError as exc:
                log.warning("cannot compare the start offset of %s with the log end yet (%s)", key, exc)
                return
            if case is False:
                continue
            del self._unchecked[key]
            if case is not None:
                self._on_invalid_offsets(case)

    def _check_topic_id(self) -> None:
        """Checkpoint offsets saved under another topic id belong to a deleted topic. The state takes
        the current id only once none of the old topic's offsets is left in it (held, not yet assigned)."""
        current = topic_id(self._consumer, self.topic)
        if current is None or current == self._topic_id:
            return
        starts = {_tp(k): start for k, start in self._unchecked.items()}
        # Partitions read until now were read from the old topic: their positions are stale as well.
        starts.update({_tp(k): offset for k, offset in self._fetched_next.items() if k not in self._held})
        cases = topic_recreated(starts, self._topic_id, current)
        for case in cases:
            self._unchecked.pop(_key(case.partition), None)
            self._on_invalid_offsets(case)
        if cases and self.on_offsets_beyond_log_end == "reset_to_log_start":
            self._targets.clear()   # old topic's offsets; whoever is assigned them starts from the group's commit
        if not self._targets and not self._held:
            self._topic_id = current

    def _on_invalid_offsets(self, case: BeyondLogEnd | TopicRecreated) -> None:
        key = _key(case.partition)
        self.offsets_invalid_total += 1
        if self.on_offsets_invalid is not None:
            self.on_offsets_invalid()
        self._drop_buffered({key})
        self._fetched_next.pop(key, None)
        if self.on_offsets_beyond_log_end == "fail":
            log.error("%s; policy fail: partition %s is not read or committed", case.describe(), key)
            self._held[key] = case.describe()
            self._consumer.pause(case.partition)
            return
        log.error("%s; policy reset_to_log_start: reading %s again from the log start", case.describe(), key)
        self._consumer.seek_to_beginning(case.partition)
        self._acks[key] = AckedPrefix()

    def _drop_buffered(self, keys: set[str]) -> None:
        self._buffer = deque(r for r in self._buffer if r.position.key not in keys)

    def _on_revoked(self, revoked) -> None:
        """Holds the revoked partitions' records back until the new assignment is known."""
        self._revoked |= {_key(tp) for tp in revoked}

    def _on_assigned(self, assigned) -> None:
        """Partitions gone to another member: forget their buffered records and acks (the new owner
        resumes at the group's committed offset; this member never commits for them). Partitions
        kept: continue right after what was fetched, whatever position the client kept. New ones:
        their start offset is compared with the log end after the first fetch."""
        keys = {_key(tp) for tp in assigned}
        gone = self._revoked - keys
        self._drop_buffered(gone)
        for key in gone:
            self._acks.pop(key, None)
            self._fetched_next.pop(key, None)
            self._held.pop(key, None)
            self._unchecked.pop(key, None)
        self._revoked = set()
        for key in keys:
            if key in self._targets:
                self._apply(key, self._targets[key])
            elif key in self._held:
                self._consumer.pause(_tp(key))
            elif key in self._fetched_next:   # checked again: a replaced broker also ends in a rebalance
                self._consumer.seek(_tp(key), self._fetched_next[key])
                self._unchecked[key] = self._fetched_next[key]
            else:
                self._unchecked.setdefault(key, None)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource):
        self.source = source

    def on_partitions_revoked(self, revoked):
        self.source._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.source._on_assigned(assigned)
