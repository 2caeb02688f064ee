"""The daemon as a real process on a directory source: a whole stream, bad input, SIGTERM, a full disk."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from daemon_fixtures import consumed_count, produce_dir, read_audit, start_daemon, wait_until, write_config

import torch

from streamd.service.checkpoint import load_checkpoint
from streamd.client import load_encoder
from streamd.config import load_config
from streamd.service.wiring import build_learner_from
from streamd.learning.data import task_stream
from streamd.service.snapshots import list_versions, read_manifest

TASKS, PER_TASK = 3, 40


def file_positions(inbox: Path) -> dict[str, str]:
    """relative path -> the position string the directory source gives it."""
    return {p.relative_to(inbox).as_posix(): f"{p.relative_to(inbox).as_posix()}@{p.stat().st_ctime_ns}"
            for p in sorted(inbox.rglob("*")) if p.is_file() and p.suffix != ".json" and not p.name.startswith(".")}


def write_bad_files(inbox: Path) -> dict[str, str]:
    """Broken inputs next to the good ones (task folder of the last task): name -> expected reason family."""
    folder = inbox / f"task-{TASKS - 1:03d}"
    png = next(folder.glob("*.png")).read_bytes()
    bad = {"zz-corrupt.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "zz-empty.png": b"",
           "zz-truncated.png": png[: len(png) // 2], "zz-text.jpg": b"hello, not an image"}
    for name, payload in bad.items():
        (folder / name).write_bytes(payload)
    return {f"{folder.name}/{name}" for name in bad}


def test_daemon_consumes_a_task_stream_finds_header_boundaries_and_dead_letters_bad_files(tmp_path):
    inbox = tmp_path / "inbox"
    produce_dir(inbox, TASKS, PER_TASK)
    bad = write_bad_files(inbox)
    positions = file_positions(inbox)
    daemon = start_daemon(write_config(tmp_path), exit_when_idle=1.5)
    summary = daemon.wait(timeout=150)

    assert summary["records_seen"] == TASKS * PER_TASK + len(bad)
    assert summary["records_decoded"] == TASKS * PER_TASK
    assert summary["records_dead_lettered"] == len(bad)
    assert summary["tasks"] == TASKS and list(summary["task_ids"]) == [f"task-{t:03d}" for t in range(TASKS)]
    assert [b["kind"] for b in summary["boundaries"]] == ["header"] * (TASKS - 1)
    first_of_task = {t: min(p for p in positions if p.startswith(f"task-{t:03d}/")) for t in range(1, TASKS)}
    assert [b["position"] for b in summary["boundaries"]] == [positions[first_of_task[t]] for t in range(1, TASKS)]
    assert summary["steps"] >= TASKS * PER_TASK // 16 - 2 and summary["checkpoints"] >= TASKS
    assert summary["snapshots"] >= TASKS and summary["checkpoint_failures"] == 0

    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "dead").glob("*.json")]
    assert {s["position"]["key"] for s in sidecars} == bad
    assert all(s["reason"] and " " not in s["reason"] for s in sidecars)
    assert set(summary["dead_letter_reasons"]) == {s["reason"] for s in sidecars}
    (run,) = read_audit(tmp_path / "audit.log")
    assert sorted(run.positions) == sorted(positions.values()) and not run.tail
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["counters"]["records_seen"] == summary["records_seen"]
    assert state["learner"]["counters"]["step"] == summary["steps"]
    assert "img/s" in daemon.log(), "progress lines while it runs"


def test_exssnet_daemon_snapshots_load_downstream_as_each_tasks_masked_encoder(tmp_path):
    """A supermask learner's snapshots are plain torchvision ResNets: the latest computes what the
    final checkpoint computes through the current task's mask, task 0's end snapshot what it
    computes through mask 0 (which the later task left untouched)."""
    produce_dir(tmp_path / "inbox", 2, 32)
    config = write_config(tmp_path, strategy="exssnet", plugin_options={"exssnet": {"score_steps": 1, "select_batches": 1}})
    summary = start_daemon(config, exit_when_idle=1.5).wait(timeout=150)
    assert summary["tasks"] == 2 and summary["records_decoded"] == 64
    reference = build_learner_from(load_config(config))
    reference.load_state_dict(load_checkpoint(tmp_path / "ckpt")["learner"])
    images = task_stream("digits", "class", 2, 16)[1].images[:8]
    x = reference.preprocess(images)
    manifests = {v: read_manifest(tmp_path / "snap" / v) for v in list_versions(tmp_path / "snap")}
    (task0_end,) = [v for v, m in manifests.items() if m["reason"] == "task_end" and m["task"] == 0]
    for version, task in ((max(manifests), 1), (task0_end, 0)):
        reference.plugin("exssnet").use_task(reference, task)
        with torch.no_grad():
            pulled = load_encoder(tmp_path / "snap", version).eval()(x)
        assert torch.allclose(pulled, reference.embed(images), atol=1e-5), version


def test_move_on_commit_retires_every_checkpointed_file_with_its_sidecar(tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    produce_dir(inbox, 2, 24)
    positions = file_positions(inbox)
    moves = f'on_commit = "move"\ndone_dir = "{done}"\n'
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("settle_seconds = 0.1\n", "settle_seconds = 0.1\n" + moves))
    summary = start_daemon(config, exit_when_idle=1.5).wait(timeout=120)

    assert summary["records_decoded"] == len(positions) == 48
    assert not [p for p in inbox.rglob("*") if p.is_file()], "every file was covered by the final checkpoint"
    assert sorted(p.relative_to(done).as_posix() for p in done.rglob("*.png")) == sorted(positions)
    assert len(list(done.rglob("*.png.json"))) == len(positions)
    assert summary["checkpoint_failures"] == 0


def test_sigterm_finishes_the_step_checkpoints_and_exits_zero(tmp_path):
    inbox = tmp_path / "inbox"
    produce_dir(inbox, 2, 200)
    daemon = start_daemon(write_config(tmp_path))  # runs until signalled
    wait_until(lambda: consumed_count(tmp_path / "audit.log") >= 48, 120, "three steps", daemon)
    signalled = time.monotonic()
    daemon.kill(signal.SIGTERM)
    summary = daemon.wait(timeout=30)
    assert time.monotonic() - signalled < 20
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert lines[-1].startswith("checkpoint\t"), "the last thing done is the shutdown checkpoint"
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["learner"]["counters"]["step"] == summary["steps"]
    assert state["counters"]["records_seen"] == consumed_count(tmp_path / "audit.log") < 400
    assert "SIGTERM received" in daemon.log()


def test_checkpoint_failure_is_counted_and_training_goes_on_without_commit(tmp_path):
    inbox = tmp_path / "inbox"
    produce_dir(inbox, 2, 24)
    daemon = start_daemon(write_config(tmp_path), exit_when_idle=1.0,
                          faults="checkpoint_enospc")
    summary = daemon.wait(timeout=120)
    assert summary["records_seen"] == 48 and summary["images_trained"] > 0
    assert summary["checkpoints"] == 0 and summary["checkpoint_failures"] >= 2
    assert load_checkpoint(tmp_path / "ckpt") is None
    assert "No space left on device" in daemon.log()
    assert not any(line.startswith("checkpoint") for line in (tmp_path / "audit.log").read_text().splitlines())
