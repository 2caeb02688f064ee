"""DirectorySource on real files: only complete files, a stable order, exact restarts, commit modes;
FolderDeadLetter and the atomic writer."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from streamd.connectors.base import LABEL_HEADER, TASK_HEADER, Position, Record
from streamd.connectors.directory import DirectorySource, DirectoryWriter, FolderDeadLetter

SETTLE = 0.05


def write(root: Path, rel: str, data: bytes = b"img", sidecar: dict | None = None) -> None:
    DirectoryWriter(root).write(rel, data, sidecar)


def drain(source: DirectorySource, max_records: int = 1000) -> list[Record]:
    time.sleep(SETTLE * 2)
    return source.poll(max_records, 0.0)


def names(records: list[Record]) -> list[str]:
    return [r.position.key for r in records]


def test_in_progress_and_unsettled_files_are_not_taken(tmp_path):
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "a.png.tmp").write_bytes(b"x")
    (tmp_path / "b.png.part").write_bytes(b"x")
    (tmp_path / "c.png.json").write_text("{}")
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "d.png").write_bytes(b"x")
    source = DirectorySource(tmp_path, settle_seconds=SETTLE)
    assert drain(source) == []
    source = DirectorySource(tmp_path, settle_seconds=2.0)
    write(tmp_path, "fresh.png")
    assert source.poll(10, 0.0) == []                 # still inside the settle window
    os.replace(tmp_path / "a.png.tmp", tmp_path / "a.png")   # the producer's final rename
    fast = DirectorySource(tmp_path, settle_seconds=SETTLE)
    assert sorted(names(drain(fast))) == ["a.png", "fresh.png"]


def test_order_is_the_order_files_appeared_even_with_old_mtimes(tmp_path):
    for name in ("b.png", "a.png", "sub/c.png"):
        write(tmp_path, name)
        time.sleep(0.01)
    os.utime(tmp_path / "sub" / "c.png", (1_000_000, 1_000_000))   # like `mv`/`cp -p` of an old file
    source = DirectorySource(tmp_path, settle_seconds=SETTLE)
    first = drain(source)
    assert names(first) == ["b.png", "a.png", "sub/c.png"]
    source.ack(first)
    write(tmp_path, "0-late-but-sorts-first-by-name.png")
    late = tmp_path / "old.png"
    late.write_bytes(b"x")
    os.utime(late, (1_000_000, 1_000_000))            # appeared after the others finished, with an ancient mtime
    assert sorted(names(drain(source))) == ["0-late-but-sorts-first-by-name.png", "old.png"]


def test_tasks_from_subfolders_and_sidecar_headers(tmp_path):
    write(tmp_path, "task-000/1.png", sidecar={"label": 3})
    write(tmp_path, "task-001/2.png", sidecar={"label": 4, "task": "override"})
    write(tmp_path, "top.png")
    write(tmp_path, "task-001/3.png")
    (tmp_path / "task-001" / "3.png.json").write_text("{not json")
    records = {r.position.key: r for r in drain(DirectorySource(tmp_path, settle_seconds=SETTLE))}
    assert records["task-000/1.png"].headers == {TASK_HEADER: "task-000", LABEL_HEADER: "3"}
    assert records["task-001/2.png"].headers == {TASK_HEADER: "override", LABEL_HEADER: "4"}
    assert records["top.png"].headers == {}
    assert records["task-001/3.png"].headers == {TASK_HEADER: "task-001"}     # bad sidecar ignored
    assert records["task-000/1.png"].payload == b"img" and records["top.png"].content_type == "image/png"
    plain = drain(DirectorySource(tmp_path, task_from_subfolder=False, settle_seconds=SETTLE))
    assert all(TASK_HEADER not in r.headers for r in plain if r.position.key != "task-001/2.png")


def test_restart_from_position_state_neither_skips_nor_rereads(tmp_path):
    files = [f"task-{i // 10:03d}/{i:04d}.png" for i in range(30)]
    for rel in files[:20]:
        write(tmp_path, rel, rel.encode())
    source = DirectorySource(tmp_path, settle_seconds=SETTLE)
    got = drain(source, 8)
    assert names(got) == files[:8]
    source.ack(got[:5] + [got[6]])                    # file 5 not finished yet, 6 finished out of order
    state = json.loads(json.dumps(source.position_state()))   # as stored in the checkpoint
    assert len(state["done"]) == 1

    restarted = DirectorySource(tmp_path, settle_seconds=SETTLE)
    restarted.seek(state)
    again = drain(restarted)
    assert names(again) == [files[5]] + files[7:20]
    assert all(r.payload == r.position.key.encode() for r in again)


def test_crash_loop_redelivers_exactly_the_files_after_the_checkpoint(tmp_path):
    files = [f"{i:04d}.png" for i in range(25)]
    for rel in files:
        write(tmp_path, rel)
    state: dict = {}
    checkpointed: list[str] = []
    rng = random.Random(1)
    while len(checkpointed) < len(files):
        source = DirectorySource(tmp_path, settle_seconds=SETTLE)
        source.seek(state)
        processed = []
        for _ in range(rng.randint(1, 3)):
            batch = drain(source, rng.randint(1, 5))
            source.ack(batch)
            processed += names(batch)
        # Each run starts right after the last checkpoint, in order: nothing skipped, nothing finished re-read.
        assert processed == files[len(checkpointed): len(checkpointed) + len(processed)]
        if rng.random() < 0.6:               # checkpoint, then "crash"; otherwise crash before checkpointing
            state = json.loads(json.dumps(source.position_state()))
            checkpointed += processed
    assert checkpointed == files


def test_moved_files_inside_the_watched_tree_are_not_read_again(tmp_path):
    write(tmp_path, "a/1.png")
    source = DirectorySource(tmp_path, settle_seconds=SETTLE, on_commit="move", done_dir=tmp_path / "done")
    got = drain(source)
    source.ack(got)
    source.commit(source.position_state())
    assert (tmp_path / "done" / "a" / "1.png").exists()
    assert drain(source) == []


@pytest.mark.parametrize("mode", ["delete", "move"])
def test_commit_removes_or_moves_only_what_the_state_covers(tmp_path, mode):
    root = tmp_path / "in"
    for i in range(6):
        write(root, f"t/{i}.png", sidecar={"label": i})
    source = DirectorySource(root, settle_seconds=SETTLE, on_commit=mode, done_dir=tmp_path / "done")
    got = drain(source)
    source.ack(got[:4])
    state = source.position_state()
    source.ack(got[4:])                               # finished after the checkpoint: not committed yet
    source.commit(state)
    remaining = sorted(p.name for p in (root / "t").iterdir())
    assert remaining == ["4.png", "4.png.json", "5.png", "5.png.json"]
    moved = sorted(p.name for p in (tmp_path / "done" / "t").iterdir()) if mode == "move" else []
    assert moved == ([f"{i}.png{s}" for i in range(4) for s in ("", ".json")] if mode == "move" else [])
    # A restart after a crash between checkpoint and commit still cleans up the covered files.
    final = source.position_state()
    restarted = DirectorySource(root, settle_seconds=SETTLE, on_commit=mode, done_dir=tmp_path / "done")
    restarted.seek(final)
    assert drain(restarted) == []
    restarted.commit(final)
    assert list((root / "t").iterdir()) == []


def test_keep_mode_leaves_files_and_lag_counts_unfinished(tmp_path):
    for i in range(5):
        write(tmp_path, f"{i}.png")
    source = DirectorySource(tmp_path, settle_seconds=SETTLE)
    got = drain(source, 3)
    assert source.lag() == 5
    source.ack(got)
    assert source.lag() == 2
    source.commit(source.position_state())
    assert len(list(tmp_path.iterdir())) == 5


def test_folder_dead_letter_keeps_payload_reason_and_position(tmp_path):
    sink = FolderDeadLetter(tmp_path / "dlq")
    record = Record(b"\x00broken", "image/png", Position("task-1/x.png", 123, 2, 5), {TASK_HEADER: "task-1"})
    sink.send(record, "corrupt")
    (payload,) = (tmp_path / "dlq").glob("*.bin")
    info = json.loads(payload.with_suffix(".json").read_text())
    assert payload.read_bytes() == b"\x00broken"
    assert info["reason"] == "corrupt" and info["position"] == {"key": "task-1/x.png", "offset": 123, "index": 2,
                                                                 "count": 5}
    assert info["headers"] == {TASK_HEADER: "task-1"} and info["content_type"] == "image/png"
    assert not [p for p in (tmp_path / "dlq").iterdir() if p.name.startswith(".")]
