"""Start offsets past a partition's log end: the broker was replaced by an empty one, or the topic
was deleted and recreated or truncated. A consumer seeked there reads nothing, silently, forever
(tansu answers a fetch past the end with no records and no error) and would commit the stale
offsets to the new topic.

A newly assigned (or re-seeked) partition remembers where it meant to start: the checkpoint's
offset or the group's committed offset. Its first fetch response brings the log end (the high
watermark); ``beyond_log_end`` compares the two. The fetch high watermark is used, not
``end_offsets()``: tansu's ListOffsets answers the base offset of the last batch plus one, which
is too low when the last batch holds several records.
``on_offsets_beyond_log_end`` decides what follows: "fail" holds the partition (nothing read or
committed, the source reports a problem) and "reset_to_log_start" reads it from its first offset.
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
