"""Checkpoints are atomic: a failure at any point of a write leaves LATEST and the previous checkpoint."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest
import torch

import streamd.checkpoint as ckpt


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
    real_write, real_replace = ckpt._write_synced, os.replace

    def write_synced(path, write):
        if (where == "state" and path.name == "state.pt") or (where == "arrow" and path.suffix == ".arrow") \
                or (where == "latest_pointer" and ckpt.LATEST in path.name):
            return real_write(path, partial_write_then_full_disk)
        return real_write(path, write)

    def replace(src, dst):
        if where == "latest_rename":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt, "_write_synced", write_synced)
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
