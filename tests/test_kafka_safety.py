"""KafkaSource against a real broker (tansu) when the stream misbehaves: records kafka-python cannot
parse, checkpoint offsets past the log end or of a deleted and recreated topic, a missing topic, a
dead broker, a step far longer than max_poll_interval_ms."""
from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FAST_CLIENT, create_topic, tansu_broker
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import IllegalStateError, KafkaConnectionError
from kafka.consumer.fetcher import Fetcher
from kafka.record.memory_records import MemoryRecords
from test_kafka_source import consume, offsets, produce_images, topic_id

from streamd.connectors.base import PARSE_ERROR_HEADER, UNPARSEABLE_CONTENT_TYPE
from streamd.connectors.kafka import KafkaSource
from kafka_fixtures import committed_offsets
from streamd.connectors.wire import encode_image
from streamd.bench._broker import Broker
from streamd.bench._daemons import RawHeaderKey
from streamd.service.ingest import DecodeError, decode, expand


class LyingLength(bytes):
    """A header value whose declared length is 3 bytes too long: a structurally damaged record."""

    def __len__(self) -> int:
        return bytes.__len__(self) + 3


POISON_HEADERS = [(RawHeaderKey(b"\xff\xfebad"), b"x"), ("content-type", b"image/png")]


def png(value: int) -> bytes:
    return encode_image(np.full((4, 4, 3), value, np.uint8), "png")[0]


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, list]], linger_ms: int = 0) -> None:
    """Sends (payload, headers) in order; with linger_ms > 0 and no waits, they share a record batch."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    futures = []
    for payload, headers in messages:
        futures.append(producer.send(topic, payload, headers=headers, partition=0))
        if not linger_ms:
            futures[-1].get(timeout=10)
    producer.flush()
    assert [f.get(timeout=10).offset for f in futures] == list(range(len(messages)))
    producer.close()


def unparseable(records) -> list[tuple[int, str]]:
    out = []
    for r in records:
        if r.content_type == UNPARSEABLE_CONTENT_TYPE:
            with pytest.raises(DecodeError) as err:
                expand(r)
            out.append((r.position.offset, err.value.reason))
    return out


@pytest.fixture
def fetched_batches(monkeypatch):
    """(base offset, last offset) of every record batch the consumers of this test fetched."""
    seen: set[tuple[int, int]] = set()
    parse = Fetcher._parse_fetched_data

    def spy(fetcher, completed_fetch):
        records = MemoryRecords(bytes(completed_fetch.partition_data.records or b""))
        while (batch := records.next_batch()) is not None:
            seen.add((batch.base_offset, batch.last_offset))
        return parse(fetcher, completed_fetch)

    monkeypatch.setattr(Fetcher, "_parse_fetched_data", spy)
    return seen


def test_a_record_with_a_non_utf8_header_key_alone_is_dead_lettered_and_the_stream_goes_on(kafka_broker,
                                                                                          kafka_topic):
    produce(kafka_broker, kafka_topic, [(png(0), []), (png(1), POISON_HEADERS), (png(2), [])])
    source = KafkaSource(kafka_broker, kafka_topic, "g-poison", client_options=FAST_CLIENT)
    records = consume(source, 3)
    assert offsets(records) == [0, 1, 2]
    assert unparseable(records) == [(1, "unparseable_record")]
    bad = records[1]
    assert bad.payload == png(1) and "\\xff\\xfebad" in bad.headers[PARSE_ERROR_HEADER]   # raw bytes kept
    assert [int(decode(r, 4)[0, 0, 0]) for r in (records[0], records[2])] == [0, 2]
    assert source.position_state()["offsets"] == {f"{kafka_topic}:0": 3} and source.commit(source.position_state())
    assert source.poll(5, 0.5) == [] and source.problem() is None
    source.close()


def test_a_poison_record_inside_a_batch_loses_none_of_the_good_records_around_it(kafka_broker, kafka_topic,
                                                                               fetched_batches):
    produce(kafka_broker, kafka_topic, [(png(0), []), (png(1), POISON_HEADERS), (png(2), []), (png(3), [])],
            linger_ms=500)
    source = KafkaSource(kafka_broker, kafka_topic, "g-poison-batch", max_poll_records=2, client_options=FAST_CLIENT)
    records = consume(source, 4)
    assert (0, 3) in fetched_batches                    # all four records travelled in one batch
    assert offsets(records) == [0, 1, 2, 3]
    assert unparseable(records) == [(1, "unparseable_record")]
    assert [int(decode(r, 4)[0, 0, 0]) for r in records if r.position.offset != 1] == [0, 2, 3]
    assert source.position_state()["offsets"] == {f"{kafka_topic}:0": 4}
    source.close()


def test_a_structurally_damaged_record_is_dead_lettered_instead_of_raising(kafka_broker, kafka_topic):
    produce(kafka_broker, kafka_topic, [(png(0), []), (png(1), [("h", LyingLength(b"abc"))]), (png(2), [])])
    source = KafkaSource(kafka_broker, kafka_topic, "g-damaged", client_options=FAST_CLIENT)
    records = consume(source, 3)
    assert offsets(records) == [0, 1, 2]
    assert unparseable(records) == [(1, "unparseable_record")]
    assert "Invalid record size" in records[1].headers[PARSE_ERROR_HEADER]
    assert source.poll(5, 0.5) == [] and source.position_state()["offsets"] == {f"{kafka_topic}:0": 3}
    source.close()


def test_checkpoint_offsets_beyond_the_log_end_hold_the_partition_by_default(kafka_broker, kafka_topic):
    produce_images(kafka_broker, kafka_topic, range(5))
    counted = []
    source = KafkaSource(kafka_broker, kafka_topic, "g-beyond", client_options=FAST_CLIENT,
                         on_offsets_invalid=lambda: counted.append(1))
    checkpoint = {"offsets": {f"{kafka_topic}:0": 40}, "partial": {}}   # from the broker this one replaced
    source.seek(checkpoint)
    assert consume(source, 1, timeout_s=8) == []
    assert "offsets beyond the log end" in source.problem() and "offset 40, log end 5" in source.problem()
    assert source.offsets_invalid_total == 1 and counted == [1]
    assert source.commit(source.position_state()) is True          # nothing to commit for a held partition
    assert committed_offsets(kafka_broker, "g-beyond", kafka_topic) == {}
    assert source.position_state()["offsets"] == {f"{kafka_topic}:0": 40}   # the checkpoint is not overwritten
    source.close()


def test_reset_to_log_start_reads_the_replaced_topic_from_its_first_offset(kafka_broker, kafka_topic):
    produce_images(kafka_broker, kafka_topic, range(5))
    source = KafkaSource(kafka_broker, kafka_topic, "g-reset", client_options=FAST_CLIENT,
                         on_offsets_beyond_log_end="reset_to_log_start")
    source.seek({"offsets": {f"{kafka_topic}:0": 40}, "partial": {}})
    assert offsets(consume(source, 5)) == [0, 1, 2, 3, 4]
    assert source.offsets_invalid_total == 1 and source.problem() is None
    assert source.position_state()["offsets"] == {f"{kafka_topic}:0": 5}
    source.close()


def recreate(bootstrap: str, topic: str) -> None:
    """Deletes the topic and creates an empty one of the same name (a new topic id)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.delete_topics([topic])
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def checkpoint_then_recreate(bootstrap: str, topic: str, group: str) -> tuple[dict, str]:
    """A checkpoint after 5 records, then the topic deleted, recreated and given 8 new records (more
    than the checkpoint's offset: the log end alone cannot tell). Returns (checkpoint, old topic id)."""
    produce_images(bootstrap, topic, range(5))
    first = KafkaSource(bootstrap, topic, group, client_options=FAST_CLIENT)
    assert offsets(consume(first, 5)) == [0, 1, 2, 3, 4]
    checkpoint = json.loads(json.dumps(first.position_state()))
    old_id = topic_id(first)
    first.close()
    recreate(bootstrap, topic)
    produce_images(bootstrap, topic, range(100, 108))
    return checkpoint, old_id


def test_a_checkpoint_of_a_deleted_and_recreated_topic_holds_the_partition_by_default(kafka_broker, kafka_topic):
    checkpoint, old_id = checkpoint_then_recreate(kafka_broker, kafka_topic, "g-recreated")
    counted = []
    source = KafkaSource(kafka_broker, kafka_topic, "g-recreated", client_options=FAST_CLIENT,
                         on_offsets_invalid=lambda: counted.append(1))
    source.seek(checkpoint)
    assert consume(source, 1, timeout_s=8) == []            # not the new topic's offsets 5..7
    new_id = topic_id(source)
    assert new_id != old_id
    assert f"topic id changed from {old_id} to {new_id}" in source.problem()
    assert "deleted and recreated" in source.problem()
    assert source.offsets_invalid_total == 1 and counted == [1]
    assert source.commit(source.position_state()) is True
    assert committed_offsets(kafka_broker, "g-recreated", kafka_topic) == {}
    # The checkpoint keeps the old offsets with the old id, so the next restart holds the partition again.
    assert source.position_state() == {"offsets": {f"{kafka_topic}:0": 5}, "partial": {}, "topic_id": old_id}
    assert checkpoint["topic_id"] == old_id
    source.close()


def test_reset_to_log_start_reads_a_recreated_topic_from_its_first_offset(kafka_broker, kafka_topic):
    checkpoint, old_id = checkpoint_then_recreate(kafka_broker, kafka_topic, "g-recreated-reset")
    source = KafkaSource(kafka_broker, kafka_topic, "g-recreated-reset", client_options=FAST_CLIENT,
                         on_offsets_beyond_log_end="reset_to_log_start")
    source.seek(checkpoint)
    records = consume(source, 8)
    assert offsets(records) == list(range(8)) and int(decode(records[0], 4)[0, 0, 0]) == 100
    assert source.offsets_invalid_total == 1 and source.problem() is None
    new_id = topic_id(source)
    assert source.position_state() == {"offsets": {f"{kafka_topic}:0": 8}, "partial": {}, "topic_id": new_id}
    assert new_id != old_id
    source.close()


@pytest.mark.parametrize("saved_id", ["none", "same"])
def test_a_checkpoint_without_a_topic_id_or_with_the_same_one_seeks_normally(kafka_broker, kafka_topic, saved_id):
    """Checkpoints written before topic ids were recorded have no id: no check, and the next
    state carries the id. A restart on the same topic is never mistaken for a recreated one."""
    produce_images(kafka_broker, kafka_topic, range(10))
    first = KafkaSource(kafka_broker, kafka_topic, f"g-id-{saved_id}", client_options=FAST_CLIENT)
    assert offsets(consume(first, 4)) == [0, 1, 2, 3]
    checkpoint = json.loads(json.dumps(first.position_state()))
    first.close()
    if saved_id == "none":
        checkpoint.pop("topic_id", None)
    source = KafkaSource(kafka_broker, kafka_topic, f"g-id-{saved_id}", client_options=FAST_CLIENT)
    source.seek(checkpoint)
    assert offsets(consume(source, 6)) == [4, 5, 6, 7, 8, 9]
    assert source.offsets_invalid_total == 0 and source.problem() is None
    assert source.position_state() == {"offsets": {f"{kafka_topic}:0": 10}, "partial": {},
                                       "topic_id": topic_id(source)}
    assert saved_id == "none" or checkpoint["topic_id"] == topic_id(source)
    source.close()


def test_only_checkpoint_offsets_with_two_known_topic_ids_are_compared():
    """Group-committed starts (None) carry no id; an unknown id (old checkpoint, a broker that sends
    none or the all-zero id) means no check rather than a false alarm."""
    from streamd.connectors.kafka_offsets import topic_id as metadata_topic_id, topic_recreated

    starts = {TopicPartition("t", 0): 5, TopicPartition("t", 1): None}
    assert [(c.partition.partition, c.offset) for c in topic_recreated(starts, "old", "new")] == [(0, 5)]
    assert topic_recreated(starts, None, "new") == topic_recreated(starts, "old", None) == []
    assert topic_recreated(starts, "same", "same") == []
    ids = {"zero": uuid.UUID(int=0), "real": uuid.UUID(int=7)}
    consumer = SimpleNamespace(_cluster=SimpleNamespace(topic_id=ids.get))
    assert (metadata_topic_id(consumer, "zero"), metadata_topic_id(consumer, "missing")) == (None, None)
    assert metadata_topic_id(consumer, "real") == str(uuid.UUID(int=7))


def test_a_missing_topic_is_a_problem_and_is_not_created(kafka_broker):
    topic = f"missing-{time.monotonic_ns()}"
    source = KafkaSource(kafka_broker, topic, "g-missing", client_options=FAST_CLIENT)
    deadline = time.monotonic() + 15
    while source.problem() is None and time.monotonic() < deadline:
        assert source.poll(4, 0.5) == []
    assert "not found" in (source.problem() or "")
    source.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    assert topic not in admin.list_topics()
    admin.close()


@pytest.mark.parametrize("policy", ["fail", "reset_to_log_start"])
def test_a_topic_recreated_while_the_source_reads_it_gets_the_policy(kafka_broker, kafka_topic, policy):
    """No restart, no checkpoint: the running member's own read positions belong to the old topic.

    The health check refreshes the metadata (by default only every 5 min), so the new id is seen
    within seconds without any poll; the source is polled only then: records fetched at the old
    offsets before that would be handed out too (see ``KafkaSource.check_health``), a race this
    test leaves out. The consumer's group, position and buffers stay those of the old topic."""
    produce_images(kafka_broker, kafka_topic, range(5))
    source = KafkaSource(kafka_broker, kafka_topic, f"g-live-{policy}", client_options=FAST_CLIENT,
                         on_offsets_beyond_log_end=policy)
    assert offsets(consume(source, 5)) == [0, 1, 2, 3, 4]
    old_id = topic_id(source)
    recreate(kafka_broker, kafka_topic)
    produce_images(kafka_broker, kafka_topic, range(100, 108))
    deadline = time.monotonic() + 15
    while topic_id(source) in (old_id, "None") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert topic_id(source) not in (old_id, "None")
    if policy == "fail":
        assert consume(source, 1, timeout_s=8) == []
        assert f"topic id changed from {old_id}" in (source.problem() or "")
    else:
        records = consume(source, 8)
        assert offsets(records) == list(range(8)) and int(decode(records[0], 4)[0, 0, 0]) == 100
        assert source.problem() is None and topic_id(source) != old_id
    assert source.offsets_invalid_total == 1
    source.close()


def test_a_broker_replaced_by_an_empty_one_is_read_from_the_start_under_reset(tmp_path):
    """The same address, an empty broker, the topic made again with fewer records than were read."""
    with Broker(tmp_path / "broker.log") as broker:
        topic = create_topic(broker.bootstrap)
        produce_images(broker.bootstrap, topic, range(6))
        source = KafkaSource(broker.bootstrap, topic, "g-replaced", on_offsets_beyond_log_end="reset_to_log_start",
                             client_options={**FAST_CLIENT, "request_timeout_ms": 3000})
        assert offsets(consume(source, 6)) == list(range(6))
        broker.kill()
        broker.start()
        create_topic(broker.bootstrap, name=topic)
        produce_images(broker.bootstrap, topic, range(100, 103))
        records = consume(source, 3, timeout_s=60)
        assert offsets(records) == [0, 1, 2] and int(decode(records[0], 4)[0, 0, 0]) == 100
        assert source.offsets_invalid_total == 1
        source.close()


def test_a_pending_join_counts_as_a_rejoin_needed():
    """A join started for a metadata change that went away meanwhile must still be awaited and
    applied (connectors/kafka_group.py); else the member stays REBALANCING with its partitions revoked."""
    from kafka.coordinator.base import BaseCoordinator

    def state(rejoin_needed=False, rejoining=False, join_task=None):
        return SimpleNamespace(rejoin_needed=rejoin_needed, rejoining=rejoining, _join_task=join_task)

    assert BaseCoordinator.need_rejoin(state()) is False
    assert BaseCoordinator.need_rejoin(state(rejoin_needed=True)) is True
    assert BaseCoordinator.need_rejoin(state(rejoining=True)) is True
    assert BaseCoordinator.need_rejoin(state(join_task=object())) is True


def test_a_dead_broker_is_a_problem(tmp_path):
    with tansu_broker(tmp_path / "broker.log") as (bootstrap, broker):
        topic = create_topic(bootstrap)
        produce_images(bootstrap, topic, range(3))
        source = KafkaSource(bootstrap, topic, "g-dead", client_options={**FAST_CLIENT, "request_timeout_ms": 3000})
        assert offsets(consume(source, 3)) == [0, 1, 2]
        deadline = time.monotonic() + 10
        while source.problem() is not None and time.monotonic() < deadline:   # first health check
            time.sleep(0.2)
        assert source.problem() is None
        broker.kill()
        broker.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:   # the daemon keeps polling through an outage: never raises
            assert source.poll(4, 0.5) == []
        assert "unreachable" in (source.problem() or "")
        source.close()


def test_a_retriable_error_out_of_the_consumer_poll_is_an_outage_not_a_crash(kafka_broker, kafka_topic, monkeypatch):
    """kafka-python raises KafkaConnectionError out of poll() when its coordinator lookup finds no
    broker (seen in a daemon that then exited 1); a non-retriable error still propagates."""
    produce_images(kafka_broker, kafka_topic, range(2))
    source = KafkaSource(kafka_broker, kafka_topic, "g-outage-poll", client_options=FAST_CLIENT)
    assert offsets(consume(source, 2)) == [0, 1]
    real_poll = source._consumer.poll

    def refused(**kwargs):
        raise KafkaConnectionError("111 ECONNREFUSED")

    # The broker is really up: the keepalive thread's health check would clear the problem again.
    # Stopping the thread (not patching check_health, which a call already in flight would miss)
    # leaves no other writer of the problem.
    source._keepalive.stop()
    monkeypatch.setattr(source._consumer, "poll", refused)
    started = time.monotonic()
    assert source.poll(4, 0.5) == [] and "unreachable" in source.problem()
    assert time.monotonic() - started >= 0.4, "waits out the poll timeout instead of spinning"
    monkeypatch.setattr(source._consumer, "poll", lambda **kwargs: (_ for _ in ()).throw(IllegalStateError("bug")))
    with pytest.raises(IllegalStateError):
        source.poll(4, 0.5)
    monkeypatch.setattr(source._consumer, "poll", real_poll)
    source.close()


def test_a_step_three_times_longer_than_max_poll_interval_keeps_the_membership(kafka_broker, kafka_topic):
    produce_images(kafka_broker, kafka_topic, range(10))
    options = {**FAST_CLIENT, "max_poll_interval_ms": 3000}
    source = KafkaSource(kafka_broker, kafka_topic, "g-slow", max_poll_records=2, client_options=options)
    got = consume(source, 4, batch=4, ack=False)
    before = source._consumer.group_metadata()
    time.sleep(9.0)                                   # the slow step: no call into the source at all
    after = source._consumer.group_metadata()
    assert (after.member_id, after.generation_id) == (before.member_id, before.generation_id) and before.member_id
    source.ack(got)
    assert source.commit(source.position_state()) is True
    assert committed_offsets(kafka_broker, "g-slow", kafka_topic) == {f"{kafka_topic}:0": 4}
    assert offsets(got + consume(source, 6)) == list(range(10))      # nothing fetched away, nothing re-read
    thread = source._keepalive._thread
    source.close()
    assert not thread.is_alive()


def test_members_that_poll_only_now_and_then_settle_into_one_assignment(kafka_broker):
    """A group join finishes while its member is busy (not in poll): the member must take the
    assignment it was given, not start another round (which made the other member rejoin, forever)."""
    topic = create_topic(kafka_broker, partitions=2)
    options = {**FAST_CLIENT, "max_poll_interval_ms": 20000}
    members = [KafkaSource(kafka_broker, topic, "g-busy", client_options=options) for _ in range(2)]
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and [len(m._consumer.assignment()) for m in members] != [1, 1]:
        for member in members:
            member.poll(0, 0.1)
        time.sleep(1.0)                           # busy: the join's responses arrive meanwhile
    assert [len(m._consumer.assignment()) for m in members] == [1, 1]
    generations = [m._consumer.group_metadata().generation_id for m in members]
    for _ in range(4):                            # and it stays settled: no further rounds
        for member in members:
            member.poll(0, 0.1)
        time.sleep(1.0)
    assert [m._consumer.group_metadata().generation_id for m in members] == generations
    assert {tp for m in members for tp in m._consumer.assignment()} == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    for member in members:
        member.close()
