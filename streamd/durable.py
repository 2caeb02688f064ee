"""Durable files: writes that kill -9 or a power cut leave whole or absent, never half.

Every durable write in streamd goes through here. A file or a folder is written under a hidden
temp name, fsynced, renamed into place, and its parent folder fsynced (the rename itself is then
durable). A *pointer* (a one-line file naming the current folder: checkpoints' ``LATEST``,
snapshots' ``latest``) is replaced the same way and last, so whoever follows it finds a complete
folder. A folder is discarded by first moving it into a fresh temp folder, so a kill mid-delete
never leaves half of it under its real name. ``trace`` callbacks name each step, so crash tests
can stop the process between any two of them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

Trace = Callable[[str], None]


def _no_trace(step: str) -> None:
    """The default ``trace``: production runs name no steps."""


def fsync_dir(path: Path) -> None:
    """Makes the entries of ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Creates ``path`` with ``write(file)`` and fsyncs its content (not yet its name)."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    """Writes a hidden temp file next to ``path`` and renames it: readers never see half a file.

    ``fsync=False`` keeps the atomicity but not the durability (for files a crash may lose)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fsync:
            write_synced(tmp, lambda f: f.write(data))
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)     # a full disk must not keep half files that eat the space left
        raise
    if fsync:
        fsync_dir(path.parent)


def temp_folder(root: Path, prefix: str, mode: int = 0o700) -> Path:
    """A new hidden folder under ``root`` to build a folder in before ``move_into_place``.

    Private by default; a folder others must read once it is in place (a published snapshot, pulled
    by consumers running under other uids) passes ``mode=0o755``."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    if mode != 0o700:
        folder.chmod(mode)
    return folder


def move_into_place(tmp: Path, final: Path, trace: Trace = _no_trace) -> None:
    """Renames a fully written temp folder to ``final``, durably (``final`` must not exist)."""
    fsync_dir(tmp)
    trace("folder_synced")
    os.rename(tmp, final)
    trace("renamed")
    fsync_dir(final.parent)
    trace("root_synced")


def write_pointer(root: Path, name: str, target: str, trace: Trace = _no_trace) -> None:
    """Atomically and durably makes ``root/name`` name ``target``."""
    tmp = root / f".{name}.tmp"
    write_synced(tmp, lambda f: f.write(target.encode()))
    trace("pointer_written")
    os.replace(tmp, root / name)
    trace("pointer_swapped")
    fsync_dir(root)
    trace("pointer_synced")


def read_pointer(root: Path, name: str) -> str | None:
    """What ``root/name`` names; None when it is missing or empty."""
    try:
        return (root / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def discard_folder(folder: Path, prefix: str, trace: Trace = _no_trace) -> None:
    """Deletes ``folder`` after moving it into a fresh ``prefix`` temp folder beside it."""
    trash = temp_folder(folder.parent, prefix) / folder.name
    os.rename(folder, trash)
    trace("prune:moved")
    for path in sorted(trash.iterdir()):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        trace("prune:unlinked")
    shutil.rmtree(trash.parent)


def clear_leftovers(root: Path, *prefixes: str) -> None:
    """Removes temp folders that killed writes or deletes left under ``root``."""
    for prefix in prefixes:
        for leftover in root.glob(prefix + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
