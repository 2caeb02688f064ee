"""Parquet files (one file, or a folder of ``*.parquet``) with a column of encoded images.

Files are read in name order, in row batches, skipping whole row groups on a seek. Positions
are ``Position(file name, row)``; ``position_state()`` is ``{"files": {name: first unfinished
row}}``. New files dropped into the folder are picked up (write them under a temp name and
rename: names starting with '.' or ending in '.tmp'/'.part' are ignored).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from streamd.connectors.acks import AckedPrefix
from streamd.connectors.base import LABEL_HEADER, TASK_HEADER, Position, Record
from streamd.connectors.directory import in_progress
from streamd.connectors.wire import header_text

log = logging.getLogger(__name__)


class ParquetSource:
    def __init__(self, path: str | Path, image_column: str = "image", label_column: str = "label",
                 task_column: str = "task", batch_rows: int = 256, content_type_column: str = "content_type"):
        self.path = Path(path)
        self.name = f"parquet:{self.path}"
        self.columns = {"image": image_column, "label": label_column, "task": task_column,
                        "content_type": content_type_column}
        self.batch_rows = batch_rows
        self._acks: dict[str, AckedPrefix] = {}
        self._handed_next: dict[str, int] = {}    # first row not yet handed out, per file
        self._rows: Iterator[Record] | None = None
        self._sizes: dict[str, int] = {}          # rows per file seen

    # -- Source ------------------------------------------------------------------------------
    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        out: list[Record] = []
        while len(out) < max_records:
            record = next(self._rows, None) if self._rows is not None else None
            if record is None:
                if not self._open_next() and (out or time.monotonic() >= deadline):
                    break
                if self._rows is None:
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            self._acks[record.position.key].handed_out(record.position)
            self._handed_next[record.position.key] = record.position.offset + 1
            out.append(record)
        return out

    def ack(self, records: list[Record]) -> None:
        for record in records:
            if record.position.key in self._acks:
                self._acks[record.position.key].ack(record.position)

    def problem(self) -> str | None:
        """The file (or folder of files) must exist and be readable."""
        if not os.access(self.path, os.R_OK):
            return f"{self.path} is missing or not readable"
        return None

    def position_state(self) -> dict:
        return {"files": {name: t.state()[0] for name, t in self._acks.items() if t.state()[0] is not None}}

    def seek(self, state: dict) -> None:
        self._acks = {name: AckedPrefix(int(row)) for name, row in (state or {}).get("files", {}).items()}
        self._handed_next.clear()
        self._rows = None

    def commit(self, state: dict) -> None:
        """Nothing to commit: the checkpoint holds the rows."""

    def lag(self) -> int | None:
        """Unfinished rows of the files seen so far."""
        done = {name: t.state()[0] or 0 for name, t in self._acks.items()}
        return sum(max(0, n - done.get(name, 0)) for name, n in self._sizes.items())

    def close(self) -> None:
        self._rows = None

    # -- internals ----------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.glob("*.parquet") if not in_progress(p.name))

    def _open_next(self) -> bool:
        """Moves to the next file with unread rows; False when there is none."""
        for path in self._files():
            name = path.name
            start = self._handed_next.get(name) or self._acks.setdefault(name, AckedPrefix(0)).state()[0]
            if start >= self._sizes.get(name, start + 1):    # known and finished: no need to open it again
                continue
            try:
                file = pq.ParquetFile(path)
            except Exception as exc:   # noqa: BLE001 -- a damaged file must not stop the source
                log.error("skipping unreadable Parquet file %s: %s", path, exc)
                continue
            self._sizes[name] = file.metadata.num_rows
            if start >= file.metadata.num_rows:
                continue
            if self.columns["image"] not in file.schema_arrow.names:
                log.error("skipping %s: no image column %r", path, self.columns["image"])
                continue
            self._rows = self._read(file, name, start)
            return True
        self._rows = None
        return False

    def _read(self, file: pq.ParquetFile, name: str, start: int) -> Iterator[Record]:
        wanted = [c for c in self.columns.values() if c in file.schema_arrow.names]
        first_row = 0
        for group in range(file.metadata.num_row_groups):
            n = file.metadata.row_group(group).num_rows
            if first_row + n <= start:
                first_row += n
                continue
            for batch in file.iter_batches(batch_size=self.batch_rows, row_groups=[group], columns=wanted):
                cols = batch.to_pydict()
                for i in range(batch.num_rows):
                    row = first_row + i
                    if row >= start:
                        yield self._record(cols, i, name, row)
                first_row += batch.num_rows

    def _record(self, cols: dict, i: int, name: str, row: int) -> Record:
        headers = {}
        for field, header in (("label", LABEL_HEADER), ("task", TASK_HEADER)):
            value = cols.get(self.columns[field], [None] * (i + 1))[i]
            if value is not None:
                headers[header] = header_text(value)     # binary columns: replacement chars, rejected by ingest
        content_type = cols.get(self.columns["content_type"], [None] * (i + 1))[i] or ""
        return Record(payload=cols[self.columns["image"]][i] or b"", content_type=header_text(content_type),
                      position=Position(name, row), headers=headers)
