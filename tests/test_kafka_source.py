"""KafkaSource against a real Kafka-protocol broker (tansu): consume, ack, commit, restart, seek,
Arrow multi-image messages, rebalances, large messages, dead letters (liveness: test_kafka_safety.py)."""
from __future__ import annotations

import json
import time

import numpy as np
from conftest import FAST_CLIENT, create_topic, tansu_broker
from kafka import KafkaConsumer

from streamd.connectors.base import ARROW_CONTENT_TYPE, CONTENT_TYPE_HEADER, Position, Record
from streamd.connectors.kafka import (DEAD_LETTER_POSITION_HEADER, DEAD_LETTER_REASON_HEADER, KafkaDeadLetter, KafkaSink,
                              KafkaSource)
from kafka_fixtures import committed_offsets
from streamd.connectors.wire import arrow_message, encode_image, from_kafka_headers, image_headers
from streamd.service.ingest import decode, parse_label


def produce_images(bootstrap: str, topic: str, values: range, partition: int | None = None) -> None:
    sink = KafkaSink(bootstrap, topic)
    for v in values:
        payload, content_type, extra = encode_image(np.full((4, 4, 3), v % 256, np.uint8), "png")
        sink.send(payload, {CONTENT_TYPE_HEADER: content_type, **extra, **image_headers(v // 10, v)},
                  partition=partition)
    sink.close()


def consume(source: KafkaSource, n: int, timeout_s: float = 20.0, batch: int = 16, ack: bool = True) -> list[Record]:
    """Polls until ``n`` records arrived (acking them) or the time is up."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        records = source.poll(min(batch, n - len(out)), 0.5)
        if ack:
            source.ack(records)
        out += records
    return out


def offsets(records: list[Record]) -> list[int]:
    return [r.position.offset for r in records]


def topic_id(source: KafkaSource) -> str:
    """The id of the source's topic as the broker gave it (position states record it)."""
    return str(source._consumer._cluster.topic_id(source.topic))


def test_consume_ack_commit_and_a_restart_resumes_at_the_committed_offsets(kafka_broker, kafka_topic):
    produce_images(kafka_broker, kafka_topic, range(40))
    source = KafkaSource(kafka_broker, kafka_topic, "g-main", max_poll_records=8, client_options=FAST_CLIENT)
    records = consume(source, 40)
    assert offsets(records) == list(range(40))
    assert [parse_label(r) for r in records] == list(range(40)) and records[25].task == "2"
    assert int(decode(records[7], 4)[0, 0, 0]) == 7
    state = json.loads(json.dumps(source.position_state()))
    assert state == {"offsets": {f"{kafka_topic}:0": 40}, "partial": {}, "topic_id": topic_id(source)}
    assert source.lag() == 0
    assert source.commit(state) is True
    source.close()
    # Another consumer group (a monitoring tool, the operator) sees the commit.
    assert committed_offsets(kafka_broker, "g-main", kafka_topic) == {f"{kafka_topic}:0": 40}

    produce_images(kafka_broker, kafka_topic, range(40, 50))
    again = KafkaSource(kafka_broker, kafka_topic, "g-main", max_poll_records=8, client_options=FAST_CLIENT)
    resumed = consume(again, 10)
    assert offsets(resumed) == list(range(40, 50))
    assert again.poll(10, 0.5) == []
    again.close()


def test_seek_to_checkpoint_positions_redelivers_exactly_the_records_after_them(kafka_broker, kafka_topic):
    produce_images(kafka_broker, kafka_topic, range(30))
    source = KafkaSource(kafka_broker, kafka_topic, "g-seek", max_poll_records=8, client_options=FAST_CLIENT)
    processed = consume(source, 20, ack=False)
    source.ack(processed[:12])
    checkpoint = json.loads(json.dumps(source.position_state()))
    assert checkpoint["offsets"] == {f"{kafka_topic}:0": 12}
    assert source.lag() == 18
    source.commit({"offsets": {f"{kafka_topic}:0": 5}})     # the group's commit lags the checkpoint
    # A failure in the live process: seek back (partition assigned, applied at once).
    source.seek(checkpoint)
    assert offsets(consume(source, 18)) == list(range(12, 30))
    source.close()
    # A restart: the checkpoint wins over the group's older commit (applied on assignment).
    restarted = KafkaSource(kafka_broker, kafka_topic, "g-seek", max_poll_records=8, client_options=FAST_CLIENT)
    restarted.seek(checkpoint)
    assert restarted.position_state()["offsets"] == {f"{kafka_topic}:0": 12}   # kept until assigned
    assert offsets(consume(restarted, 18)) == list(range(12, 30))
    assert restarted.poll(5, 0.3) == []
    restarted.close()


def test_arrow_messages_split_into_images_and_partial_messages_resume_exactly(kafka_broker, kafka_topic):
    sink = KafkaSink(kafka_broker, kafka_topic)
    for m in range(3):
        payloads = [encode_image(np.full((4, 4, 3), 10 * m + i, np.uint8), "png")[0] for i in range(5)]
        sink.send(arrow_message(payloads, ["image/png"] * 5, labels=[10 * m + i for i in range(5)],
                                tasks=[str(m)] * 5), {CONTENT_TYPE_HEADER: ARROW_CONTENT_TYPE})
    sink.send(b"\xff\xff\xff\xffdamaged", {CONTENT_TYPE_HEADER: ARROW_CONTENT_TYPE})
    sink.close()
    source = KafkaSource(kafka_broker, kafka_topic, "g-arrow", max_poll_records=2, client_options=FAST_CLIENT)
    images = consume(source, 7, ack=False)
    assert [(r.position.offset, r.position.index, r.position.count) for r in images] == \
        [(0, i, 5) for i in range(5)] + [(1, 0, 5), (1, 1, 5)]
    assert [parse_label(r) for r in images] == [0, 1, 2, 3, 4, 10, 11] and images[6].task == "1"
    source.ack(images)
    state = json.loads(json.dumps(source.position_state()))
    assert state == {"offsets": {f"{kafka_topic}:0": 1}, "partial": {f"{kafka_topic}:0": {"1": [0, 1]}},
                     "topic_id": topic_id(source)}
    source.close()

    restarted = KafkaSource(kafka_broker, kafka_topic, "g-arrow", max_poll_records=2, client_options=FAST_CLIENT)
    restarted.seek(state)
    rest = consume(restarted, 9)
    assert [(r.position.offset, r.position.index) for r in rest[:8]] == \
        [(1, 2), (1, 3), (1, 4)] + [(2, i) for i in range(5)]
    assert [int(decode(r, 4)[0, 0, 0]) for r in rest[:8]] == [12, 13, 14, 20, 21, 22, 23, 24]
    damaged = rest[8]                     # handed on whole, for ingest.expand to dead-letter
    assert damaged.position.offset == 3 and damaged.content_type == ARROW_CONTENT_TYPE
    assert restarted.position_state() == {"offsets": {f"{kafka_topic}:0": 4}, "partial": {},
                                          "topic_id": topic_id(restarted)}
    restarted.close()


def test_rebalance_hands_partitions_over_without_losing_records(kafka_broker):
    topic = create_topic(kafka_broker, partitions=2)
    for p in (0, 1):
        produce_images(kafka_broker, topic, range(20), partition=p)
    # The broker waits up to the rebalance timeout (= max_poll_interval_ms, 300 s by default) for
    # every member to rejoin; 20 s keeps a stalled round inside the deadline. (Rounds that never
    # settled were kafka-python restarting a join that finished between two polls: see
    # connectors/kafka_group.py and test_kafka_safety.py.)
    options = {**FAST_CLIENT, "max_poll_interval_ms": 20000}
    first = KafkaSource(kafka_broker, topic, "g-rebalance", max_poll_records=4, client_options=options)
    finished = consume(first, 6)
    assert first.commit(first.position_state()) is True
    in_flight = first.poll(4, 0.1)        # being trained on while the group rebalances

    second = KafkaSource(kafka_broker, topic, "g-rebalance", max_poll_records=4, client_options=options)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (len(first._consumer.assignment()) == 1 ==
                                               len(second._consumer.assignment())):
        for source in (first, second):
            source.poll(0, 0.2)            # take part in the rebalance, hand nothing out
    assert len(first._consumer.assignment()) == 1 == len(second._consumer.assignment()), \
        [(s._consumer.assignment(), s._consumer.group_metadata()) for s in (first, second)]
    first.ack(in_flight)                   # the step finishes after the rebalance
    (kept,) = first._consumer.assignment()
    seen = {p: [] for p in (0, 1)}
    for r in finished + [r for r in in_flight if r.position.key == f"{topic}:{kept.partition}"]:
        seen[int(r.position.key.rsplit(":", 1)[1])].append(r.position.offset)
    for source in (first, second):
        (tp,) = source._consumer.assignment()
        mine = []
        deadline = time.monotonic() + 15
        while source.position_state()["offsets"].get(f"{topic}:{tp.partition}") != 20 and time.monotonic() < deadline:
            mine += source.poll(8, 0.5)
            source.ack(mine)
        assert {r.position.key for r in mine} == {f"{topic}:{tp.partition}"}   # only its own partition
        assert source.position_state()["offsets"] == {f"{topic}:{tp.partition}": 20}
        assert source.commit(source.position_state()) is True
        seen[tp.partition] += offsets(mine)
    for p in (0, 1):      # nothing lost; re-read only what was never committed by the old owner
        assert sorted(set(seen[p])) == list(range(20))
        assert len(seen[p]) - 20 <= 4
    assert committed_offsets(kafka_broker, "g-rebalance", topic) == {f"{topic}:0": 20, f"{topic}:1": 20}
    first.close()
    second.close()


def test_large_messages_with_configured_fetch_sizes(kafka_broker, kafka_topic):
    big = np.random.default_rng(0).integers(0, 255, (1200, 1000, 3), np.uint8)    # 3.6 MB raw
    payload, content_type, extra = encode_image(big, "raw")
    sink = KafkaSink(kafka_broker, kafka_topic)
    sink.send(payload, {CONTENT_TYPE_HEADER: content_type, **extra}, wait=True)
    sink.close()
    options = {**FAST_CLIENT, "fetch_max_bytes": 8 * 1024 * 1024, "max_partition_fetch_bytes": 8 * 1024 * 1024}
    source = KafkaSource(kafka_broker, kafka_topic, "g-big", max_poll_records=2, client_options=options)
    (record,) = consume(source, 1)
    assert record.payload == payload
    assert decode(record, 16).shape == (3, 16, 16)
    source.close()


def test_dead_letter_topic_keeps_payload_reason_and_position(kafka_broker, kafka_topic):
    dead = KafkaDeadLetter(kafka_broker, kafka_topic)
    dead.send(Record(b"\x00bad", "image/png", Position("images:3", 17, 1, 4), {"streamd-task": "2"}), "corrupt")
    dead.close()
    consumer = KafkaConsumer(kafka_topic, bootstrap_servers=kafka_broker, auto_offset_reset="earliest")
    batches = {}
    deadline = time.monotonic() + 10
    while not batches and time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=500)
    consumer.close()
    (message,) = [m for messages in batches.values() for m in messages]
    headers = from_kafka_headers(message.headers)
    assert message.value == b"\x00bad"
    assert headers[DEAD_LETTER_REASON_HEADER] == "corrupt" and headers[DEAD_LETTER_POSITION_HEADER] == "images:3@17#1"
    assert headers["streamd-task"] == "2" and headers[CONTENT_TYPE_HEADER] == "image/png"


def test_commit_and_lag_survive_a_broker_outage(tmp_path):
    with tansu_broker(tmp_path / "broker.log") as (bootstrap, broker):
        topic = create_topic(bootstrap)
        produce_images(bootstrap, topic, range(5))
        source = KafkaSource(bootstrap, topic, "g-outage", client_options={**FAST_CLIENT, "request_timeout_ms": 3000},
                             commit_retries=2, commit_timeout_ms=1000)
        records = consume(source, 5)
        broker.kill()
        broker.wait()
        start = time.monotonic()
        assert source.commit(source.position_state()) is False          # logged, not raised
        assert time.monotonic() - start < 15
        assert source.poll(5, 0.2) == [] and source.lag() in (None, 0)
        source.close()
    assert offsets(records) == list(range(5))
