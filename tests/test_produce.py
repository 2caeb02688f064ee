"""``streamd produce`` through the real CLI: into folders read back by DirectorySource, into the real
broker read back by KafkaSource, from bundled data and from Parquet, with headers, formats and rate."""
from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAST_CLIENT

from streamd.connectors.base import TASK_HEADER
from streamd.connectors.directory import DirectorySource
from streamd.connectors.kafka import KafkaSource
from streamd.commands.produce import send_order
from streamd.cli import main
from streamd.learning.data import task_stream
from streamd.service.ingest import decode, parse_label


def produce(capsys, *args) -> dict:
    assert main(["produce", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def read_dir(root, **kw) -> list:
    source = DirectorySource(root, settle_seconds=0.0, **kw)
    records = []
    while batch := source.poll(64, 0.0):
        records += batch
    return records


def test_dataset_tasks_into_folders_with_headers(tmp_path, capsys):
    summary = produce(capsys, "dir", "--out", str(tmp_path), "--dataset", "digits", "--tasks", "3",
                      "--per-task", "4", "--image-size", "16")
    assert summary["images"] == 12 and summary["tasks"] == ["0", "1", "2"]
    records = read_dir(tmp_path)
    assert [r.task for r in records] == ["task-000"] * 4 + ["task-001"] * 4 + ["task-002"] * 4
    expected = task_stream("digits", "class", 3, 16)
    sent = [(t, i) for t in expected for i in send_order(t, seed=0)[:4]]
    assert [parse_label(r) for r in records] == [int(t.labels[i]) for t, i in sent]
    first = decode(records[0], 16)
    assert first.shape == (3, 16, 16) and (first == sent[0][0].images[sent[0][1]]).all()    # PNG is lossless
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]            # no temp files left


def test_no_headers_raw_format_count_and_rate(tmp_path, capsys):
    start = time.monotonic()
    summary = produce(capsys, "dir", "--out", str(tmp_path), "--dataset", "digits", "--split", "rotation",
                      "--tasks", "2", "--no-headers", "--format", "raw", "--count", "10", "--rate", "20",
                      "--image-size", "8")
    assert summary["images"] == 10 and time.monotonic() - start >= 0.45         # 10 images at 20/s
    records = read_dir(tmp_path)
    assert len(records) == 10 and all(r.headers.keys() == {"streamd-shape"} for r in records)
    assert all(r.content_type == "application/x-raw-uint8" and decode(r, 8).shape == (3, 8, 8) for r in records)
    assert all("/" not in r.position.key for r in records)                      # flat: no task folders


def test_arrow_is_refused_for_folders(tmp_path, capsys):
    assert main(["produce", "dir", "--out", str(tmp_path), "--dataset", "digits", "--format", "arrow"]) == 2
    assert capsys.readouterr().err == "streamd: --format arrow is for Kafka; a directory gets one file per image " \
                                      "(png or raw)\n"


def test_parquet_file_into_folders(tmp_path, capsys):
    images = [r.payload for r in _some_pngs(tmp_path / "src", capsys)]
    pq.write_table(pa.table({"image": images, "label": [7, 8, 9], "task": ["a", "a", "b"]}), tmp_path / "in.parquet")
    produce(capsys, "dir", "--out", str(tmp_path / "out"), "--parquet", str(tmp_path / "in.parquet"))
    records = read_dir(tmp_path / "out")
    assert [(r.task, parse_label(r)) for r in records] == [("task-a", 7), ("task-a", 8), ("task-b", 9)]
    assert [r.payload for r in records] == images                              # forwarded unchanged


def _some_pngs(root, capsys) -> list:
    produce(capsys, "dir", "--out", str(root), "--dataset", "digits", "--tasks", "3", "--per-task", "1",
            "--image-size", "8", "--no-headers")
    return read_dir(root)


@pytest.mark.parametrize("fmt,messages", [("arrow", 4), ("png", 12)])
def test_dataset_tasks_into_kafka(kafka_broker, kafka_topic, capsys, fmt, messages):
    summary = produce(capsys, "kafka", "--bootstrap-servers", kafka_broker, "--topic", kafka_topic,
                      "--dataset", "digits", "--tasks", "2", "--per-task", "6", "--format", fmt,
                      "--arrow-batch", "4", "--image-size", "12")
    assert summary["images"] == 12 and summary["messages"] == messages          # arrow: 4+2 per task
    source = KafkaSource(kafka_broker, kafka_topic, f"g-produce-{fmt}", client_options=FAST_CLIENT)
    records = []
    deadline = time.monotonic() + 20
    while len(records) < 12 and time.monotonic() < deadline:
        records += source.poll(32, 0.5)
    source.close()
    assert [r.headers[TASK_HEADER] for r in records] == ["0"] * 6 + ["1"] * 6
    expected = task_stream("digits", "class", 2, 12)
    sent = [(t, i) for t in expected for i in send_order(t, seed=0)[:6]]
    assert [parse_label(r) for r in records] == [int(t.labels[i]) for t, i in sent]
    assert all((decode(r, 12) == t.images[i]).all() for r, (t, i) in zip(records, sent))


def test_per_task_takes_a_shuffled_sample_of_each_task_not_its_first_class(tmp_path, capsys):
    """mnist5k is sorted by class: the demo's first 40 images per task used to be one class."""
    produce(capsys, "dir", "--out", str(tmp_path / "out"), "--dataset", "mnist5k", "--tasks", "5", "--per-task", "40",
            "--image-size", "8", "--headers")
    labels_by_task: dict[str, set[int]] = {}
    for r in read_dir(tmp_path / "out"):
        labels_by_task.setdefault(r.task, set()).add(parse_label(r))
    assert len(labels_by_task) == 5 and all(len(labels) == 2 for labels in labels_by_task.values()), labels_by_task


def test_folder_tree_of_classes_into_folders(tmp_path, capsys):
    from PIL import Image

    for cls, shade in (("cat", 30), ("dog", 220)):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), (shade, shade, shade)).save(tmp_path / "tree" / cls / f"{i}.png")
    summary = produce(capsys, "dir", "--out", str(tmp_path / "out"), "--dataset", f"imagefolder:{tmp_path / 'tree'}",
                      "--tasks", "2", "--image-size", "10")
    assert summary["images"] == 6 and summary["tasks"] == ["0", "1"]
    records = read_dir(tmp_path / "out")
    assert [(r.task, parse_label(r), int(decode(r, 10)[0, 0, 0])) for r in records] == \
        [("task-000", 0, 30)] * 3 + [("task-001", 1, 220)] * 3
