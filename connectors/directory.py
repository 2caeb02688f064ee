"""A watched directory tree as a source, a folder dead-letter sink and an atomic image writer.

Which files are taken: names starting with '.' (files and folders) or ending in '.tmp'/'.part'
are in progress, '*.json' files are sidecars, and a file is taken only once its ctime is
``settle_seconds`` old (every write and the final rename update ctime, so a file still being
written is not taken). Producers should write a temp name and rename (``DirectoryWriter`` does),
and write a sidecar ``<file>.json`` ({"label": 3, "task": "a", "shape": "28,28"}) BEFORE the file.

Stable order: by (ctime_ns, relative path), i.e. the moment a file appeared complete in the tree
(rename and ``mv`` set ctime; an old mtime kept by ``mv``/``cp -p`` does not matter). Because only
files older than the settle window are taken, every file of one scan's window was already
visible when the scan began, so a later file never sorts before one already handed out.

Positions are ``Position(relative path, ctime_ns)``; ``position_state()`` is the acked prefix as
a high-water mark plus the few acked files above it: ``{"hwm": [ctime_ns, path] | None,
"done": [[ctime_ns, path], ...]}``. A file whose ctime changes after it was finished (chmod,
touch) sorts anew and is read again: a duplicate, never a skip.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import deque
from pathlib import Path

from streamd.connectors.base import LABEL_HEADER, SHAPE_HEADER, TASK_HEADER, Position, Record
from streamd.durable import atomic_write

log = logging.getLogger(__name__)

COMMIT_MODES = ("keep", "delete", "move")
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif", ".raw": "application/x-raw-uint8"}
SIDECAR_HEADERS = {"label": LABEL_HEADER, "task": TASK_HEADER, "shape": SHAPE_HEADER}
_RESCAN_S = 0.2          # idle rescan period, stretched to 5x the scan time so big trees cost <20% CPU

Key = tuple[int, str]


def in_progress(name: str) -> bool:
    return name.startswith(".") or name.endswith((".tmp", ".part"))



class DirectorySource:
    """Finished files of a tree, in a stable order; see the module docstring."""

    def __init__(self, root: str | Path, task_from_subfolder: bool = True, settle_seconds: float = 1.0,
                 on_commit: str = "keep", done_dir: str | Path | None = None):
        if on_commit not in COMMIT_MODES:
            raise ValueError(f"on_commit must be one of {COMMIT_MODES}, not {on_commit!r}")
        self.root = Path(root)
        self.name = f"directory:{self.root}"
        self.task_from_subfolder = task_from_subfolder
        self.settle_ns = int(settle_seconds * 1e9)
        self.on_commit = on_commit
        self.done_dir = Path(done_dir) if done_dir else self.root / ".done"
        self._hwm: Key | None = None
        self._done: set[Key] = set()              # finished above the high-water mark
        self._queue: deque[Key] = deque()         # found, not yet handed out
        self._outstanding: dict[Key, bool] = {}   # handed out in order -> acked
        self._finished_paths: dict[Key, str] = {}  # finished files left to delete/move at commit
        self._scan_seconds = 0.0

    # -- Source ------------------------------------------------------------------------------
    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        out: list[Record] = []
        while len(out) < max_records:
            if not self._queue:
                self._scan()
            if not self._queue:
                if out or time.monotonic() >= deadline:
                    break
                time.sleep(min(max(_RESCAN_S, 5 * self._scan_seconds), max(0.0, deadline - time.monotonic())))
                continue
            key = self._queue.popleft()
            record = self._read(key)
            if record is not None:
                self._outstanding[key] = False
                out.append(record)
        return out

    def ack(self, records: list[Record]) -> None:
        for record in records:
            key = (record.position.offset, record.position.key)
            if key in self._outstanding:
                self._outstanding[key] = True
        while self._outstanding:
            key, acked = next(iter(self._outstanding.items()))
            if not acked:
                break
            del self._outstanding[key]
            self._hwm = key
            if self.on_commit != "keep":
                self._finished_paths[key] = key[1]
        self._done = {k for k in self._done if k > self._hwm} if self._hwm else self._done

    def problem(self) -> str | None:
        """The watched folder must exist and be listable."""
        if not os.access(self.root, os.R_OK | os.X_OK) or not self.root.is_dir():
            return f"folder {self.root} is missing or not readable"
        return None

    def position_state(self) -> dict:
        done = self._done | {k for k, acked in self._outstanding.items() if acked}
        return {"hwm": list(self._hwm) if self._hwm else None, "done": sorted(map(list, done))}

    def seek(self, state: dict) -> None:
        hwm = (state or {}).get("hwm")
        self._hwm = (int(hwm[0]), str(hwm[1])) if hwm else None
        self._done = {(int(c), str(p)) for c, p in (state or {}).get("done", [])}
        self._queue.clear()
        self._outstanding.clear()

    def commit(self, state: dict) -> None:
        """keep: nothing; delete/move: removes the finished files (and sidecars) the state covers."""
        if self.on_commit == "keep":
            return
        hwm = tuple(state["hwm"]) if state and state.get("hwm") else None
        done = {tuple(k) for k in (state or {}).get("done", [])}
        for key in [k for k in self._finished_paths if (hwm and k <= hwm) or k in done]:
            self._retire(self._finished_paths.pop(key))

    def lag(self) -> int | None:
        """Files found but not finished (files not yet scanned are not counted)."""
        return len(self._queue) + sum(not acked for acked in self._outstanding.values())

    def close(self) -> None:
        pass

    # -- internals ----------------------------------------------------------------------------
    def _finished(self, key: Key) -> bool:
        return (self._hwm is not None and key <= self._hwm) or key in self._done

    def _scan(self) -> None:
        started = time.monotonic()
        cutoff = time.time_ns() - self.settle_ns
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not in_progress(d) and Path(dirpath, d) != self.done_dir)
            for name in filenames:
                if in_progress(name) or name.endswith(".json"):
                    continue
                path = Path(dirpath) / name
                try:
                    ctime = path.stat().st_ctime_ns
                except FileNotFoundError:
                    continue
                if ctime > cutoff:
                    continue
                key = (ctime, path.relative_to(self.root).as_posix())
                if self._finished(key):
                    if self.on_commit != "keep":
                        self._finished_paths[key] = key[1]
                elif key not in self._outstanding:
                    found.append(key)
        self._queue.extend(sorted(found))
        self._scan_seconds = time.monotonic() - started

    def _read(self, key: Key) -> Record | None:
        rel = key[1]
        path = self.root / rel
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            payload = b""
        headers = {}
        if self.task_from_subfolder and "/" in rel:
            headers[TASK_HEADER] = rel.split("/", 1)[0]
        headers.update(_sidecar_headers(path))
        return Record(payload=payload, content_type=CONTENT_TYPES.get(path.suffix.lower(), ""),
                      position=Position(rel, key[0]), headers=headers, timestamp=key[0] / 1e9)

    def _retire(self, rel: str) -> None:
        src = self.root / rel
        for path in (src, src.with_name(src.name + ".json")):
            try:
                if self.on_commit == "delete":
                    path.unlink()
                else:
                    dest = self.done_dir / path.relative_to(self.root)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(path, dest)
            except FileNotFoundError:
                pass


def _sidecar_headers(path: Path) -> dict[str, str]:
    sidecar = path.with_name(path.name + ".json")
    try:
        fields = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable sidecar %s: %s", sidecar, exc)
        return {}
    if not isinstance(fields, dict):
        log.warning("ignoring sidecar %s: not a JSON object", sidecar)
        return {}
    return {header: str(fields[name]) for name, header in SIDECAR_HEADERS.items() if fields.get(name) is not None}


class DirectoryWriter:
    """Writes images atomically (temp name, then rename), the sidecar first; used by ``streamd produce``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def write(self, relpath: str, payload: bytes, sidecar: dict | None = None) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if sidecar:
            atomic_write(path.with_name(path.name + ".json"), json.dumps(sidecar).encode(), fsync=False)
        atomic_write(path, payload, fsync=False)
        return path


class FolderDeadLetter:
    """Dead-letter folder: ``<time>-<position>.bin`` with the payload and a ``.json`` with the reason.

    Both are fsynced, because the record is acked (and may be committed) right after.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def send(self, record: Record, reason: str) -> None:
        stem = f"{time.time_ns()}-{re.sub(r'[^A-Za-z0-9_.@#-]+', '_', str(record.position))[-150:]}"
        atomic_write(self.root / f"{stem}.bin", record.payload)
        info = {"reason": reason, "position": {"key": record.position.key, "offset": record.position.offset,
                                               "index": record.position.index, "count": record.position.count},
                "content_type": record.content_type, "headers": record.headers, "timestamp": record.timestamp}
        atomic_write(self.root / f"{stem}.json", json.dumps(info).encode())

    def close(self) -> None:
        pass
