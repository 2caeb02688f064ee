"""Atomic, durable checkpoints: the single source of truth the daemon restarts from.

Layout: ``DIR/ckpt-000000123/state.pt`` (torch tensors and plain values, loaded with
``weights_only=True``, so nothing arbitrary is unpickled) plus one ``*.arrow`` file per Arrow
table found in the state (replay buffers), and ``DIR/LATEST`` naming the newest folder.

A save writes a temp folder, fsyncs it and renames it to a name never used before (a re-save of a
step gets ``ckpt-000000123-1``, ``-2``, ...), then replaces ``LATEST`` atomically. So the folder
LATEST names is never deleted or overwritten, and a kill at any point leaves the old or the new
checkpoint loadable. Pruning keeps LATEST's folder; it first moves a folder into a ``.trash-*``
folder, so a kill mid-delete never leaves half a checkpoint under a ``ckpt-`` name.

Loading falls back to the newest complete checkpoint when LATEST's is missing or unloadable, and
raises :class:`NoLoadableCheckpoint` when the folder holds checkpoints and none loads: starting
fresh over them would silently throw learned state away while the source offsets stay committed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa
import torch

from streamd import durable

log = logging.getLogger(__name__)

LATEST = "LATEST"
NAME_RE = re.compile(r"^ckpt-(\d{9,})(?:-(\d+))?$")
TMP_PREFIX, TRASH_PREFIX, RESET_PREFIX = ".tmp-ckpt-", ".trash-ckpt-", "reset-"

# Test hook: called with the name of each step of a save ("write:state.pt:before", "renamed", ...),
# so a test can fail or kill the process at any one of them. None in production.
step_hook: Callable[[str], None] | None = None


class NoLoadableCheckpoint(RuntimeError):
    """The checkpoint folder holds checkpoints and none of them loads."""


def _step(name: str) -> None:
    if step_hook is not None:
        step_hook(name)


def _split_tables(state, tables: dict[str, pa.Table]):
    """Replaces every pa.Table in a nested dict/list with a reference to a separate file."""
    if isinstance(state, pa.Table):
        name = f"{len(tables):03d}.arrow"
        tables[name] = state
        return {"__arrow__": name}
    if isinstance(state, dict):
        return {k: _split_tables(v, tables) for k, v in state.items()}
    if isinstance(state, list):
        return [_split_tables(v, tables) for v in state]
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


def _write_step(path: Path, write) -> None:
    _step(f"write:{path.name}:before")
    durable.write_synced(path, write)
    _step(f"write:{path.name}:after")


# Names and order ----------------------------------------------------------------------------------
def _key(name: str) -> tuple[int, int]:
    match = NAME_RE.match(name)
    return int(match[1]), int(match[2] or 0)


def step_of(name: str) -> int:
    """The training step of a checkpoint folder name (``ckpt-000000123`` or a re-save ``ckpt-000000123-2``)."""
    return _key(name)[0]


def checkpoint_folders(root: str | Path) -> list[Path]:
    """Every checkpoint folder, oldest first (by step, then re-save number)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if NAME_RE.match(p.name) and p.is_dir()), key=lambda p: _key(p.name))


def _unused_name(root: Path, step: int) -> str:
    """``ckpt-STEP``, or ``ckpt-STEP-N`` after the highest re-save of that step already there."""
    taken = [_key(p.name)[1] for p in checkpoint_folders(root) if step_of(p.name) == step]
    return f"ckpt-{step:09d}" + (f"-{max(taken) + 1}" if taken else "")


def _pointer(root: Path) -> str | None:
    return durable.read_pointer(root, LATEST)


# Saving -------------------------------------------------------------------------------------------
def save_checkpoint(root: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Writes ``state`` durably and returns the checkpoint folder. Raises OSError on failure
    (full disk, ...), leaving every earlier checkpoint and LATEST untouched."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pa.Table] = {}
    plain = _split_tables(state, tables)
    tmp = durable.temp_folder(root, TMP_PREFIX)
    try:
        _write_step(tmp / "state.pt", lambda f: torch.save(plain, f))
        for name, table in tables.items():
            def write_table(f, table=table):
                with pa.ipc.new_file(f, table.schema) as w:
                    w.write_table(table)
            _write_step(tmp / name, write_table)
        final = root / _unused_name(root, step)
        durable.move_into_place(tmp, final, trace=_step)
        durable.write_pointer(root, LATEST, final.name, trace=_step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _prune(root, keep, final.name)
    except OSError as e:  # the new checkpoint is durable: a failed clean-up must not count as a failed save
        log.warning("pruning old checkpoints in %s failed: %s", root, e)
    return final


def _prune(root: Path, keep: int, latest: str) -> None:
    """Keeps LATEST's folder and the ``keep - 1`` newest others; clears leftovers of killed saves."""
    others = [p for p in checkpoint_folders(root) if p.name != latest]
    for old in others[: max(0, len(others) - (keep - 1))]:
        durable.discard_folder(old, TRASH_PREFIX, trace=_step)
    durable.clear_leftovers(root, TMP_PREFIX, TRASH_PREFIX)
    _step("pruned")


# Loading ------------------------------------------------------------------------------------------
def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder LATEST names, if it holds a state file."""
    name = _pointer(Path(root))
    if name is None or not NAME_RE.match(name):
        return None
    folder = Path(root) / name
    return folder if (folder / "state.pt").exists() else None


def _load_folder(folder: Path) -> dict:
    plain = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    return _join_tables(plain, folder)


def load_checkpoint(root: str | Path) -> dict | None:
    """The state of LATEST's checkpoint, else of the newest one that loads; None when the folder holds
    no checkpoint. Raises NoLoadableCheckpoint when it holds some and none loads."""
    root = Path(root)
    named = _pointer(root)
    folders = checkpoint_folders(root)[::-1]
    if named is None and not folders:
        return None
    first = [f for f in folders if f.name == named]
    if named is not None and not first:
        log.error("%s/%s names %s, which does not exist", root, LATEST, named)
    elif named is None:
        log.error("%s has checkpoint folders but no %s file", root, LATEST)
    failures = []
    for folder in first + [f for f in folders if f.name != named]:
        try:
            state = _load_folder(folder)
        except Exception as e:  # any damage (truncated, missing file, bad pickle) makes it unloadable
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            failures.append(f"{folder.name}: {reason}")
            log.error("checkpoint %s cannot be loaded: %s", folder, reason)
            continue
        if folder.name != named:
            log.error("FALLING BACK to checkpoint %s: the one %s names (%s) is missing or unloadable; the sources "
                      "are sought back to its positions, so records after it are read again", folder.name, LATEST,
                      named)
        return state
    detail = "; ".join(failures) if failures else f"{LATEST} names {named} but no checkpoint folder exists"
    raise NoLoadableCheckpoint(
        f"checkpoint folder {root} holds checkpoints but none loads ({detail}). Refusing to start fresh over "
        "them: restore the folder, or run `streamd run --reset` to set them aside and start fresh")


def set_aside(root: str | Path) -> Path | None:
    """``--reset``: moves every checkpoint (and LATEST) into ``DIR/reset-<UTC time>/`` instead of deleting
    them; returns that folder, or None when there was nothing to set aside."""
    root = Path(root)
    folders = checkpoint_folders(root)
    pointer = [root / LATEST] if (root / LATEST).exists() else []
    if not folders and not pointer:
        log.info("--reset: no checkpoint in %s", root)
        return None
    aside = root / (RESET_PREFIX + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ"))
    aside.mkdir()
    for path in folders + pointer:
        os.rename(path, aside / path.name)
    durable.fsync_dir(root)
    log.warning("--reset: ignoring %d checkpoint(s) in %s (%s named %s): moved to %s, starting fresh",
                len(folders), root, LATEST, _pointer(aside), aside)
    return aside
