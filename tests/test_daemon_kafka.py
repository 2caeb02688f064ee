"""The daemon against a real Kafka-protocol broker (tansu): consumes all, header boundaries, dead
letters, offsets committed after checkpoints and honoured by the group; a failing checkpoint commits nothing."""
from __future__ import annotations

import json
from collections import Counter

from daemon_fixtures import kafka_source_toml, produce_kafka, start_daemon, write_config
from kafka import KafkaProducer
from test_kafka_safety import RawHeaderKey

from connectors.kafka import committed_offsets

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
                           exit_when_idle=2.0, env={"STREAMD_TEST_FAULTS": "checkpoint_enospc"}).wait(timeout=150)
    assert summary["records_seen"] == 8 and summary["checkpoint_failures"] >= 1 and summary["checkpoints"] == 0
    assert committed_offsets(kafka_broker, "g-daemon", kafka_topic) == {f"{kafka_topic}:0": total}
