"""ParquetSource on real Parquet files: batches across row groups, headers from columns, exact restarts."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamd.connectors.base import LABEL_HEADER, TASK_HEADER
from streamd.connectors.parquet import ParquetSource
from streamd.connectors.wire import encode_image
from streamd.service.ingest import decode, parse_label


def write_images(path, n: int, start: int = 0, with_headers: bool = True, row_group_size: int = 16) -> None:
    images = [encode_image(np.full((6, 6, 3), (start + i) % 256, np.uint8), "png")[0] for i in range(n)]
    columns = {"image": images}
    if with_headers:
        columns["label"] = [(start + i) % 10 for i in range(n)]
        columns["task"] = [str((start + i) // 20) for i in range(n)]
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def read_all(source: ParquetSource, batch: int = 9) -> list:
    out = []
    while records := source.poll(batch, 0.0):
        out += records
        source.ack(records)
    return out


def test_reads_every_row_in_order_with_label_and_task(tmp_path):
    write_images(tmp_path / "a.parquet", 50)
    records = read_all(ParquetSource(tmp_path / "a.parquet", batch_rows=7))
    assert [(r.position.key, r.position.offset) for r in records] == [("a.parquet", i) for i in range(50)]
    assert [parse_label(r) for r in records] == [i % 10 for i in range(50)]
    assert records[45].headers[TASK_HEADER] == "2"
    assert [int(decode(r, 4)[0, 0, 0]) for r in records[:3]] == [0, 1, 2]


def test_missing_optional_columns_and_custom_column_names(tmp_path):
    write_images(tmp_path / "plain.parquet", 5, with_headers=False)
    records = read_all(ParquetSource(tmp_path / "plain.parquet"))
    assert len(records) == 5 and all(r.headers == {} for r in records)
    pq.write_table(pa.table({"png": [records[0].payload], "y": [7]}), tmp_path / "renamed.parquet")
    (renamed,) = read_all(ParquetSource(tmp_path / "renamed.parquet", image_column="png", label_column="y"))
    assert renamed.headers == {LABEL_HEADER: "7"}


def test_restart_from_position_state_is_exact_across_files(tmp_path):
    write_images(tmp_path / "part-0.parquet", 30)
    write_images(tmp_path / "part-1.parquet", 30, start=30)
    (tmp_path / ".part-2.parquet.tmp").write_bytes(b"being written")
    source = ParquetSource(tmp_path, batch_rows=8)
    first = source.poll(40, 0.0)
    source.ack(first[:33])
    state = json.loads(json.dumps(source.position_state()))
    assert state == {"files": {"part-0.parquet": 30, "part-1.parquet": 3}}
    assert source.lag() == 27

    restarted = ParquetSource(tmp_path, batch_rows=8)
    restarted.seek(state)
    rest = read_all(restarted)
    assert [(r.position.key, r.position.offset) for r in rest] == [("part-1.parquet", i) for i in range(3, 30)]
    assert restarted.lag() == 0

    write_images(tmp_path / "part-2.parquet", 4, start=60)     # a new file dropped into the folder
    assert [r.position.offset for r in read_all(restarted)] == [0, 1, 2, 3]
    assert restarted.position_state()["files"]["part-2.parquet"] == 4
