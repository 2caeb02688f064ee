"""The daemon against a real Kafka-protocol broker (tansu): consumes all, header boundaries, dead
letters, offsets committed after checkpoints and honoured by the group; a failing checkpoint commits nothing."""
from __future__ import annotations

import json
import time
from collections import Counter

import httpx
from conftest import create_topic, free_port
from daemon_fixtures import kafka_source_toml, produce_kafka, start_daemon, wait_until, write_config
from kafka import KafkaProducer

from streamd.connectors.kafka import HEALTH_CHECK_S
from kafka_fixtures import committed_offsets
from streamd.bench._broker import Broker
from streamd.bench._daemons import RawHeaderKey

TASKS, PER_TASK = 3, 32
BAD = [(b"\x89PNG\r\n\x1a\n" + b"x" * 50, [("content-type", b"image/png")]),
       (b"", [("content-type", b"image/png")]),
       (b"\x00" * 12, [("content-type", b"application/x-raw-uint8"), ("streamd-shape", b"99999,99999,3")]),
       (b"\x89PNG", [(RawHeaderKey(b"\xff\xfe"), b"x")])]      # kafka-python cannot parse it: a poison record


def kafka_config(tmp_path, bootstrap: str, topic: str, group: str, ckpt: str):
    return write_config(tmp_path, kafka_source_toml(bootstrap, topic, group), checkpoint_dir=ckpt)


def test_daemon_consumes_kafka_finds_header_boundaries_and_commits_after_checkpoints(tmp_path, kafka_broker,
                                                                                       kafka_topic):
    produce_kafka(kafka_broker, kafka_topic, TASKS, PER_TASK)
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    for payload, headers in BAD:
        producer.send(kafka_topic, payload, headers=headers + [("streamd-task", b"2")])
    producer.flush()
    producer.close()
    total = TASKS * PER_TASK + len(BAD)

    summary = start_daemon(kafka_config(tmp_path, kafka_broker, kafka_topic, "g-daemon", "ckpt1"),
                           exit_when_idle=2.0).wait(timeout=150)
    assert summary["records_seen"] == total and summary["records_dead_lettered"] == len(BAD)
    assert summary["dead_letter_reasons"]["unparseable_record"] == 1
    assert [b["kind"] for b in summary["boundaries"]] == ["header"] * (TASKS - 1)
    assert [b["position"] for b in summary["boundaries"]] == [f"{kafka_topic}:0@{t * PER_TASK}" for t in (1, 2)]
    assert summary["checkpoints"] >= TASKS
    assert committed_offsets(kafka_broker, "g-daemon", kafka_topic) == {f"{kafka_topic}:0": total}
    reasons = [json.loads(p.read_text())["reason"] for p in (tmp_path / "dead").glob("*.json")]
    assert len(reasons) == len(BAD) and Counter(reasons) == Counter(summary["dead_letter_reasons"])

    # Without a checkpoint the group's committed offsets decide where a member starts: only the new
    # records are read. Every checkpoint of this run fails (full disk), so nothing more is committed.
    produce_kafka(kafka_broker, kafka_topic, 2, 4)
    summary = start_daemon(kafka_config(tmp_path, kafka_broker, kafka_topic, "g-daemon", "ckpt2"),
                           exit_when_idle=2.0, faults="checkpoint_enospc").wait(timeout=150)
    assert summary["records_seen"] == 8 and summary["checkpoint_failures"] >= 1 and summary["checkpoints"] == 0
    assert committed_offsets(kafka_broker, "g-daemon", kafka_topic) == {f"{kafka_topic}:0": total}


def test_readyz_is_503_while_the_broker_is_gone_and_200_once_the_topic_is_back(tmp_path):
    """Readiness follows the source: a dead broker, then an empty broker without the input topic
    (never auto-created), then the topic made again."""
    with Broker(tmp_path / "broker.log") as broker:
        topic = create_topic(broker.bootstrap)
        produce_kafka(broker.bootstrap, topic, 1, 8)
        port = free_port()
        daemon = start_daemon(kafka_config(tmp_path, broker.bootstrap, topic, "g-ready", "ckpt"),
                              env={"STREAMD_API__PORT": str(port)})
        url = f"http://127.0.0.1:{port}/readyz"

        def ready_status() -> int | None:
            try:
                return httpx.get(url, timeout=2).status_code
            except httpx.TransportError:
                return None

        try:
            wait_until(lambda: ready_status() == 200, 120, "ready with the broker up", daemon)
            broker.kill()
            wait_until(lambda: ready_status() == 503, 30, "not ready with the broker gone", daemon)
            broker.start()
            time.sleep(3 * HEALTH_CHECK_S)   # health checks ran against the empty broker
            assert ready_status() == 503, "the input topic is missing: not ready"
            assert topic not in topics_of(broker.bootstrap), "the daemon must not create its input topic"
            create_topic(broker.bootstrap, name=topic)
            wait_until(lambda: ready_status() == 200, 60, "ready again once the topic exists", daemon)
        finally:
            daemon.kill()
            daemon.proc.wait(timeout=30)


def topics_of(bootstrap: str) -> set[str]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()
