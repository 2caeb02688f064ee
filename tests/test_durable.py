"""The durable-files primitives every writer uses: whole or absent, never half, and nothing left over."""
from __future__ import annotations

import errno
import os

import pytest

from streamd import durable


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    durable.atomic_write(target, b"first")
    durable.atomic_write(target, b"second", fsync=False)
    assert target.read_bytes() == b"second" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    durable.atomic_write(target, b"old")
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        durable.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_folder_then_pointer_in_that_order_with_each_step_named(tmp_path):
    steps = []
    tmp = durable.temp_folder(tmp_path, ".tmp-")
    (tmp / "data").write_bytes(b"x")
    durable.move_into_place(tmp, tmp_path / "v1", trace=steps.append)
    assert durable.read_pointer(tmp_path, "latest") is None
    durable.write_pointer(tmp_path, "latest", "v1", trace=steps.append)
    assert steps == ["folder_synced", "renamed", "root_synced", "pointer_written", "pointer_swapped",
                     "pointer_synced"]
    assert durable.read_pointer(tmp_path, "latest") == "v1" and (tmp_path / "v1" / "data").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v1"]


def test_a_pointer_whose_swap_fails_still_names_the_old_folder(tmp_path, monkeypatch):
    durable.write_pointer(tmp_path, "latest", "v1")
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        durable.write_pointer(tmp_path, "latest", "v2")
    monkeypatch.undo()
    assert durable.read_pointer(tmp_path, "latest") == "v1"


def test_discard_moves_the_folder_away_before_deleting_anything(tmp_path):
    folder = tmp_path / "v1"
    (folder / "sub").mkdir(parents=True)
    (folder / "a").write_bytes(b"a")
    seen = []

    def trace(step):      # at each step the real name is already gone
        seen.append((step, folder.exists()))

    durable.discard_folder(folder, ".trash-", trace=trace)
    assert seen == [("prune:moved", False), ("prune:unlinked", False), ("prune:unlinked", False)]
    assert list(tmp_path.iterdir()) == []


def test_clear_leftovers_removes_only_the_given_prefixes(tmp_path):
    for name in (".tmp-1", ".trash-2", "v1"):
        (tmp_path / name).mkdir()
    durable.clear_leftovers(tmp_path, ".tmp-", ".trash-")
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]
