"""Start offsets that do not belong to the partition's log. Past its log end: the broker was
replaced by an empty one, or the topic was deleted and recreated or truncated. A consumer seeked
there reads nothing, silently, forever (tansu answers a fetch past the end with no records and no
error) and would commit the stale offsets to the new topic.

A newly assigned (or re-seeked) partition remembers where it meant to start: the checkpoint's
offset or the group's committed offset. Its first fetch response brings the log end (the high
watermark); ``beyond_log_end`` compares the two. The fetch high watermark is used, not
``end_offsets()``: tansu's ListOffsets answers the base offset of the last batch plus one, which
is too low when the last batch holds several records.

A topic deleted and recreated (or a broker replaced by an empty one) that already holds MORE
records than the checkpoint's offset passes that check, and its first records would be skipped
silently. So a checkpoint also records the topic id (the UUID a broker gives each topic when it
creates it, metadata v10+, KIP-516); ``topic_recreated`` compares it with the current one. Only a
checkpoint carries an id: group-committed offsets are left to the log-end check, and so are
checkpoints written without an id and brokers that give none.

``on_offsets_beyond_log_end`` decides what follows either case: "fail" holds the partition (nothing
read or committed, the source reports a problem) and "reset_to_log_start" reads it from its first
offset.
"""
from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

OFFSET_POLICIES = ("fail", "reset_to_log_start")


@dataclass(frozen=True)
class BeyondLogEnd:
    partition: TopicPartition
    offset: int
    log_end: int

    def describe(self) -> str:
        return (f"offsets beyond the log end on {self.partition.topic}:{self.partition.partition}: checkpoint/"
                f"committed offset {self.offset}, log end {self.log_end}; the topic was replaced or truncated")


def beyond_log_end(consumer: KafkaConsumer, tp: TopicPartition, start: int | None) -> BeyondLogEnd | None | bool:
    """A BeyondLogEnd if ``start`` (None: the group's committed offset) is past the log end, None if
    it is not, False while the partition was not fetched yet (the log end is unknown)."""
    log_end = consumer.highwater(tp)
    if log_end is None:
        return False
    if start is None:
        start = consumer.committed(tp)
    if start is not None and start > log_end:
        return BeyondLogEnd(tp, start, log_end)
    return None


@dataclass(frozen=True)
class TopicRecreated:
    partition: TopicPartition
    offset: int
    saved_id: str
    current_id: str

    def describe(self) -> str:
        return (f"topic id changed from {self.saved_id} to {self.current_id}: the topic was deleted and recreated "
                f"(or its broker replaced by an empty one); offset {self.offset} on "
                f"{self.partition.topic}:{self.partition.partition} belongs to the old topic")


def topic_id(consumer: KafkaConsumer, topic: str) -> str | None:
    """The topic's id in the consumer's metadata (``_cluster`` is ``_client.cluster``); None while
    unknown: no metadata yet, or a broker that sends no id (pre-v10 metadata, the all-zero id)."""
    found = consumer._cluster.topic_id(topic)
    return str(found) if found is not None and found.int else None


def topic_recreated(starts: dict[TopicPartition, int | None], saved_id: str | None,
                    current_id: str | None) -> list[TopicRecreated]:
    """The partitions whose start offset came from a checkpoint (not None) saved under another topic
    id than the current one: those offsets belong to a deleted topic. None to compare with (an old
    checkpoint, a broker without ids): no case."""
    if saved_id is None or current_id is None or saved_id == current_id:
        return []
    return [TopicRecreated(tp, start, saved_id, current_id) for tp, start in starts.items() if start is not None]
