"""Checkpoints are atomic: a failure at any point of a write leaves LATEST and the previous checkpoint."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest
import torch

import streamd.service.checkpoint as ckpt
from streamd import durable


def state(step: int) -> dict:
    return {"weights": torch.full((3,), float(step)), "counters": {"step": step},
            "plugins": {"replay": {"buffer": pa.table({"label": pa.array([step, step + 1])})}}}


def assert_is_state(loaded: dict, step: int) -> None:
    assert torch.equal(loaded["weights"], torch.full((3,), float(step)))
    assert loaded["counters"] == {"step": step}
    assert loaded["plugins"]["replay"]["buffer"].column("label").to_pylist() == [step, step + 1]


def test_round_trip_latest_and_pruning(tmp_path):
    assert ckpt.load_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, state(step), keep=2)
    assert_is_state(ckpt.load_checkpoint(tmp_path), 3)
    assert (tmp_path / ckpt.LATEST).read_text() == "ckpt-000000003"
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000000002", "ckpt-000000003"]


def partial_write_then_full_disk(f):
    f.write(b"partial")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["state", "arrow", "latest_pointer", "latest_rename"])
def test_failure_mid_write_keeps_latest_and_previous_checkpoint(tmp_path, monkeypatch, where):
    ckpt.save_checkpoint(tmp_path, 1, state(1))
    real_write, real_replace = durable.write_synced, os.replace

    def write_synced(path, write):
        if (where == "state" and path.name == "state.pt") or (where == "arrow" and path.suffix == ".arrow") \
                or (where == "latest_pointer" and ckpt.LATEST in path.name):
            return real_write(path, partial_write_then_full_disk)
        return real_write(path, write)

    def replace(src, dst):
        if where == "latest_rename":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(durable, "write_synced", write_synced)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, state(2))
    monkeypatch.undo()
    assert (tmp_path / ckpt.LATEST).read_text() == "ckpt-000000001"
    assert_is_state(ckpt.load_checkpoint(tmp_path), 1)
    assert not list(tmp_path.glob(".tmp-ckpt-*"))
    # and the next save works normally
    ckpt.save_checkpoint(tmp_path, 3, state(3))
    assert_is_state(ckpt.load_checkpoint(tmp_path), 3)


def test_re_saving_a_step_never_touches_the_checkpoint_latest_names(tmp_path):
    ckpt.save_checkpoint(tmp_path, 5, state(5), keep=1)
    ckpt.save_checkpoint(tmp_path, 5, state(6), keep=1)   # same step, new content (e.g. dead letters acked)
    assert (tmp_path / ckpt.LATEST).read_text() == "ckpt-000000005-1"
    assert_is_state(ckpt.load_checkpoint(tmp_path), 6)
    ckpt.save_checkpoint(tmp_path, 5, state(7), keep=1)
    assert [p.name for p in ckpt.checkpoint_folders(tmp_path)] == ["ckpt-000000005-2"]  # after -1, never reused
    ckpt.save_checkpoint(tmp_path, 6, state(8), keep=2)
    assert [p.name for p in ckpt.checkpoint_folders(tmp_path)] == ["ckpt-000000005-2", "ckpt-000000006"]


@pytest.mark.parametrize("damage", ["folder_missing", "state_truncated", "arrow_missing"])
def test_load_falls_back_to_the_newest_loadable_checkpoint_and_says_so(tmp_path, caplog, damage):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, state(step), keep=3)
    latest = tmp_path / "ckpt-000000003"
    if damage == "folder_missing":
        for path in latest.iterdir():
            path.unlink()
        latest.rmdir()
    elif damage == "state_truncated":
        (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:100])
    else:
        (latest / "000.arrow").unlink()
    assert_is_state(ckpt.load_checkpoint(tmp_path), 2)
    assert "FALLING BACK to checkpoint ckpt-000000002" in caplog.text
    # the next save moves LATEST on and prunes, but never loses the good one it came from
    ckpt.save_checkpoint(tmp_path, 4, state(4), keep=2)
    assert_is_state(ckpt.load_checkpoint(tmp_path), 4)


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, state(step), keep=2)
    for folder in ckpt.checkpoint_folders(tmp_path):
        (folder / "state.pt").write_bytes(b"garbage")
    with pytest.raises(ckpt.NoLoadableCheckpoint, match="ckpt-000000002: .*ckpt-000000001: .*--reset"):
        ckpt.load_checkpoint(tmp_path)
    pointer_only = tmp_path / "pointer-only"
    pointer_only.mkdir()
    (pointer_only / ckpt.LATEST).write_text("ckpt-000000009")
    with pytest.raises(ckpt.NoLoadableCheckpoint, match="LATEST names ckpt-000000009 but no checkpoint folder"):
        ckpt.load_checkpoint(pointer_only)


def test_set_aside_moves_every_checkpoint_and_deletes_nothing(tmp_path):
    assert ckpt.set_aside(tmp_path) is None
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, state(step), keep=2)
    aside = ckpt.set_aside(tmp_path)
    assert ckpt.load_checkpoint(tmp_path) is None
    assert sorted(p.name for p in aside.iterdir()) == ["LATEST", "ckpt-000000001", "ckpt-000000002"]
    assert_is_state(ckpt.load_checkpoint(aside), 2)   # still whole where it went
    ckpt.save_checkpoint(tmp_path, 1, state(1))
    assert aside.is_dir() and (tmp_path / ckpt.LATEST).read_text() == "ckpt-000000001"
