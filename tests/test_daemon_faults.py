"""Faults around the training loop, with the daemon as a real process: a stream too slow to fill a
batch, and a dead-letter folder on a full disk. Each checks what the audit log and the summary say
against what really happened: a record is acked as trained only if a step trained on it, and a
record whose dead letter was not written is not acked at all."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from daemon_fixtures import produce_dir, read_audit, start_daemon, write_config

from streamd.bench._chaos_scenarios import fill, tmpfs

SLOW_IMAGES, SLOW_INTERVAL_S = 20, 0.6


def statuses(audit: Path) -> list[str]:
    return [line.split("\t")[0] for line in audit.read_text().splitlines()
            if not line.startswith(("start", "checkpoint"))]


def test_a_stream_slower_than_the_batch_wait_still_trains_every_record_it_acks_as_trained(tmp_path):
    """One image per 0.6 s against a 0.5 s batch wait: each wait ends with a single image."""
    staged = tmp_path / "staged"
    produce_dir(staged, 1, SLOW_IMAGES)
    files = sorted(p for p in staged.rglob("*.png"))
    daemon = start_daemon(write_config(tmp_path), exit_when_idle=2.0)
    for path in files:   # a rename into the inbox is the moment the file appears complete
        target = tmp_path / "inbox" / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        for sidecar in path.parent.glob(path.name + ".json"):
            os.replace(sidecar, target.with_name(sidecar.name))
        os.replace(path, target)
        time.sleep(SLOW_INTERVAL_S)
    summary = daemon.wait(timeout=120)

    seen = statuses(tmp_path / "audit.log")
    assert len(seen) == SLOW_IMAGES == summary["records_seen"] and set(seen) <= {"trained", "held_out"}
    assert summary["steps"] >= 3, "a slow stream must train"
    assert summary["images_trained"] == seen.count("trained"), \
        f"acked as trained: {seen.count('trained')}, really trained: {summary['images_trained']}"


def write_corrupt_files(inbox: Path, count: int) -> set[str]:
    folder = inbox / "task-000"
    names = {f"zz-corrupt-{i:02d}.png" for i in range(count)}
    for name in names:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return {f"task-000/{name}" for name in names}


def test_records_whose_dead_letter_cannot_be_written_are_not_acked_and_are_dead_lettered_after_restart(tmp_path):
    inbox, bad_count, good_count = tmp_path / "inbox", 12, 16
    produce_dir(inbox, 1, good_count)
    bad = write_corrupt_files(inbox, bad_count)
    with tmpfs(tmp_path / "dead", "256k") as dead:
        filler = fill(dead)
        first = start_daemon(write_config(tmp_path), exit_when_idle=2.0).wait(timeout=120)
        assert first["records_seen"] == good_count and first["records_dead_lettered"] == 0, first
        assert not [p for p in dead.iterdir() if p != filler], "nothing fits on the full disk"
        acked = {line.split("\t")[1].split("@")[0] for line in (tmp_path / "audit.log").read_text().splitlines()
                 if not line.startswith(("start", "checkpoint"))}
        assert not acked & bad, "a record without a written dead letter was acked"

        filler.unlink()   # the disk has room again: the restarted daemon reads the un-acked records again
        second = start_daemon(write_config(tmp_path), exit_when_idle=2.0).wait(timeout=120)
        assert second["records_seen"] == good_count + bad_count and second["records_dead_lettered"] == bad_count
        letters = [json.loads(p.read_text()) for p in dead.glob("*.json")]
        assert {letter["position"]["key"] for letter in letters} == bad
        runs = read_audit(tmp_path / "audit.log")
        assert {p.split("@")[0] for p in runs[1].positions} == bad, "the restart read exactly the un-acked records"


class FailingThenHealedSink:
    """A real folder dead-letter sink that fails like a full disk for its first ``failures`` sends."""

    def __init__(self, folder: Path, failures: int):
        from streamd.connectors.directory import FolderDeadLetter

        self.sink, self.failures, self.calls = FolderDeadLetter(folder), failures, 0

    def send(self, record, reason: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(28, "No space left on device")
        self.sink.send(record, reason)

    def close(self) -> None:
        self.sink.close()


def test_dead_letters_are_retried_while_running_and_acked_once_written(tmp_path):
    from streamd.config import load_config
    from streamd.service.daemon import Daemon

    produce_dir(tmp_path / "inbox", 1, 8)
    bad = write_corrupt_files(tmp_path / "inbox", 3)
    sink = FailingThenHealedSink(tmp_path / "dead", failures=4)
    daemon = Daemon(load_config(write_config(tmp_path)), dead_letter=sink)
    summary = daemon.run(exit_when_idle=4.0)

    assert summary["records_dead_lettered"] == 3 and summary["records_seen"] == 11
    assert sink.calls >= 3 + 4, "every failed send was retried"
    assert {json.loads(p.read_text())["position"]["key"] for p in (tmp_path / "dead").glob("*.json")} == bad
    text = daemon.metrics.registry.get_sample_value
    assert text("streamd_dead_letter_failures_total") == 4
    assert text("streamd_dead_letter_backlog_records") == 0
