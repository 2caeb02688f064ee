"""Kafka helpers the tests need and the daemon does not."""
from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition


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
