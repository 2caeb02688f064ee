"""The fuzz corpus written as files and as Parquet rows and read back by the real sources: every case
comes back as exactly one record with its bytes and headers, ingest survives each, and the
dead-letter sinks (folder, Kafka header encoding) accept every record that ingest rejects."""
from __future__ import annotations

import json
import time

import pytest

from streamd.connectors.base import LABEL_HEADER, SHAPE_HEADER, TASK_HEADER
from streamd.connectors.directory import DirectorySource, FolderDeadLetter
from streamd.connectors.parquet import ParquetSource
from streamd.connectors.wire import from_kafka_headers, header_bytes, kafka_headers
from streamd.bench.fuzz_inputs import DEAD, fuzz_records, ingest_outcomes, write_to_directory, write_to_parquet

N_CASES = 1000


@pytest.fixture(scope="module")
def corpus():
    return list(fuzz_records(N_CASES, seed=0))


def drain(source, batch: int = 97) -> list:
    out = []
    while records := source.poll(batch, 0.0):
        source.ack(records)
        out += records
    return out


def test_directory_source_reads_every_written_case_and_ingest_survives_it(tmp_path, corpus):
    written = write_to_directory(corpus, tmp_path / "in")
    time.sleep(0.05)
    records = drain(DirectorySource(tmp_path / "in", task_from_subfolder=False, settle_seconds=0.01))
    assert sorted(r.position.key for r in records) == sorted(written)
    sink = FolderDeadLetter(tmp_path / "dlq")
    dead = 0
    for record in records:
        case = written[record.position.key]
        assert record.payload == case.payload
        carried = {h: v for h, v in case.headers.items() if h in (LABEL_HEADER, TASK_HEADER, SHAPE_HEADER)}
        assert record.headers == carried                  # sidecars round-trip even non-UTF-8 values
        for outcome in ingest_outcomes(record):
            if outcome.startswith(DEAD):
                sink.send(record, outcome.split(":", 1)[1])
                dead += 1
    letters = sorted((tmp_path / "dlq").glob("*.json"))
    assert dead > 300 and len(letters) == dead == len(list((tmp_path / "dlq").glob("*.bin")))
    assert all(json.loads(p.read_text())["reason"] for p in letters)


def test_parquet_source_reads_every_written_row_and_ingest_survives_it(tmp_path, corpus):
    cases = write_to_parquet(corpus, tmp_path / "corpus.parquet", row_group_size=128)
    records = drain(ParquetSource(tmp_path / "corpus.parquet", batch_rows=100))
    assert [r.position.offset for r in records] == list(range(len(cases)))
    for record, case in zip(records, cases):
        assert (record.payload, record.content_type) == (case.payload, case.content_type)
        for header in (LABEL_HEADER, TASK_HEADER):     # binary columns: raw bytes arrive with replacement chars
            expected = header_bytes(case.headers[header]).decode("utf-8", "replace") if header in case.headers else None
            assert record.headers.get(header) == expected
        ingest_outcomes(record)                         # raises on anything but DecodeError


def test_kafka_header_encoding_accepts_every_corpus_header(corpus):
    for case in corpus:
        back = from_kafka_headers(kafka_headers(case.headers))
        assert set(back) == set(case.headers)
        assert all(back[k] == v for k, v in case.headers.items() if v.isascii())
    raw = {TASK_HEADER: b"task-\xff".decode("utf-8", "surrogateescape"), "x": "\ud800"}
    assert dict(kafka_headers(raw)) == {TASK_HEADER: b"task-\xff", "x": b"?"}
