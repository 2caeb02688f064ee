"""kill -9 the daemon mid-checkpoint and mid-step, restart it, and prove from the audit log that no
record was skipped and only records after the last durable checkpoint were consumed twice."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import create_topic
from daemon_fixtures import (assert_exactly_once_up_to_checkpoints, consumed_count, kafka_source_toml, produce_dir,
                             produce_kafka, read_audit, start_daemon, wait_until, write_config)

from kafka_fixtures import committed_offsets

TASKS, PER_TASK = 3, 64


def directory_stream(tmp_path: Path) -> tuple[Path, set[str]]:
    inbox = tmp_path / "inbox"
    produce_dir(inbox, TASKS, PER_TASK)
    files = [p for p in inbox.rglob("*.png") if not p.name.startswith(".")]
    return write_config(tmp_path), {f"{p.relative_to(inbox).as_posix()}@{p.stat().st_ctime_ns}" for p in files}


def kafka_stream(tmp_path: Path, bootstrap: str) -> tuple[Path, set[str]]:
    topic = create_topic(bootstrap, prefix="crash")
    produce_kafka(bootstrap, topic, TASKS, PER_TASK)
    source = kafka_source_toml(bootstrap, topic, f"crash-{topic}")
    return write_config(tmp_path, source), {f"{topic}:0@{o}" for o in range(TASKS * PER_TASK)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["directory", "kafka"])
def test_kill_9_mid_checkpoint_and_mid_step_neither_skips_nor_repeats_checkpointed_records(tmp_path, kind, request):
    if kind == "kafka":
        config, expected = kafka_stream(tmp_path, request.getfixturevalue("kafka_broker"))
    else:
        config, expected = directory_stream(tmp_path)
    ckpt, audit = tmp_path / "ckpt", tmp_path / "audit.log"

    # 1. Every checkpoint write sleeps before its rename; kill -9 inside one that follows a durable one.
    daemon = start_daemon(config, faults="checkpoint_sleep=2")
    wait_until(lambda: (ckpt / "LATEST").exists() and any(ckpt.glob(".tmp-ckpt-*")) and read_audit(audit)[-1].tail,
               150, "a checkpoint being written over records consumed after a durable one", daemon)
    daemon.kill()
    daemon.proc.wait(timeout=10)
    durable = (ckpt / "LATEST").read_text()

    # 2. Restart; kill -9 at an arbitrary moment once it trained past its restored checkpoint.
    before = consumed_count(audit)
    daemon = start_daemon(config)
    wait_until(lambda: consumed_count(audit) >= before + 40, 150, "40 more records", daemon)
    daemon.kill()
    daemon.proc.wait(timeout=10)

    # 3. Restart and let it drain the stream.
    summary = start_daemon(config, exit_when_idle=2.0).wait(timeout=180)

    runs = read_audit(audit)
    assert len(runs) == 3
    assert runs[0].durable and runs[0].tail, "run 1 had consumed records after its last durable checkpoint"
    repeats = assert_exactly_once_up_to_checkpoints(runs, expected)
    assert repeats >= len(runs[0].tail), "records after the killed checkpoint were read again"
    assert summary["resumed_from"] and summary["records_seen"] == len(expected), \
        "counters restored with the positions count every record once"
    assert [b["kind"] for b in summary["boundaries"]] == ["header"] * (TASKS - 1)
    assert durable != (ckpt / "LATEST").read_text() and not list(ckpt.glob(".tmp-ckpt-*"))
    if kind == "kafka":
        topic = next(iter(expected)).split(":")[0]
        assert committed_offsets(request.getfixturevalue("kafka_broker"), f"crash-{topic}", topic) == \
            {f"{topic}:0": TASKS * PER_TASK}
