"""Atomic, durable checkpoints: the single source of truth the daemon restarts from.

Layout: ``DIR/ckpt-000000123/state.pt`` (torch tensors and plain values, loaded with
``weights_only=True``, so nothing arbitrary is unpickled) plus one ``*.arrow`` file per Arrow
table found in the state (replay buffers). Written to a temp folder, fsynced, renamed; then
``DIR/LATEST`` is replaced atomically. Older checkpoints beyond ``keep`` are removed last.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import torch

LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_tables(state, tables: dict[str, pa.Table], path: str = "t"):
    """Replaces every pa.Table in a nested dict/list with a reference to a separate file."""
    if isinstance(state, pa.Table):
        name = f"{len(tables):03d}.arrow"
        tables[name] = state
        return {"__arrow__": name}
    if isinstance(state, dict):
        return {k: _split_tables(v, tables, f"{path}.{k}") for k, v in state.items()}
    if isinstance(state, list):
        return [_split_tables(v, tables, f"{path}.{i}") for i, v in enumerate(state)]
    return state


def _join_tables(state, folder: Path):
    if isinstance(state, dict):
        if set(state) == {"__arrow__"}:
            with pa.memory_map(str(folder / state["__arrow__"])) as src:
                return pa.ipc.open_file(src).read_all()
        return {k: _join_tables(v, folder) for k, v in state.items()}
    if isinstance(state, list):
        return [_join_tables(v, folder) for v in state]
    return state


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(root: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Writes ``state`` durably and returns the checkpoint folder. Raises OSError on failure
    (full disk, ...), leaving every earlier checkpoint and LATEST untouched."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pa.Table] = {}
    plain = _split_tables(state, tables)
    final = root / f"ckpt-{step:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=root))
    try:
        _write_synced(tmp / "state.pt", lambda f: torch.save(plain, f))
        for name, table in tables.items():
            def write_table(f, table=table):
                with pa.ipc.new_file(f, table.schema) as w:
                    w.write_table(table)
            _write_synced(tmp / name, write_table)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        latest_tmp = root / f".{LATEST}.tmp"
        _write_synced(latest_tmp, lambda f: f.write(final.name.encode()))
        os.replace(latest_tmp, root / LATEST)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    ckpts = sorted(p for p in root.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-ckpt-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / "state.pt").exists() else None


def load_checkpoint(root: str | Path) -> dict | None:
    """The state of the latest durable checkpoint, or None when there is none."""
    folder = latest_checkpoint(root)
    if folder is None:
        return None
    plain = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    return _join_tables(plain, folder)
