"""``streamd produce {kafka|dir}``: push images into Kafka or a folder as a sequence of tasks.

Images come from bundled data split into tasks (``--dataset mnist5k --split class --tasks 5``),
any folder tree with one sub-folder per class (``--dataset imagefolder:PATH``), or a Parquet
file whose image column is forwarded unchanged (``--parquet FILE``). Tasks are sent one after
the other; with ``--headers`` each image says its task and label (Kafka headers, or a
``task-NNN/`` sub-folder plus a ``<file>.json`` sidecar). Files are written atomically.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamd.connectors.base import ARROW_CONTENT_TYPE, CONTENT_TYPE_HEADER, LABEL_HEADER, SHAPE_HEADER, TASK_HEADER
from streamd.connectors.wire import arrow_message, encode_image, image_headers
from streamd.errors import LocalIOError, NotFoundError, UnreachableError, UsageError, os_error_text

FORMATS = ("png", "raw", "arrow")
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp",
               "image/gif": ".gif", "application/x-raw-uint8": ".raw"}


@dataclass
class Item:
    """One encoded image on its way out."""

    payload: bytes
    content_type: str
    task: str
    label: int | None
    extra: dict[str, str] = field(default_factory=dict)   # e.g. the raw shape header


def dataset_items(args) -> Iterator[Item]:
    """Loads and splits the dataset now (so bad input fails before anything is sent), encodes lazily."""
    from streamd.learning.data import task_stream

    folder = Path(args.dataset.split(":", 1)[1]) if args.dataset.startswith("imagefolder:") else None
    if folder is not None and not folder.is_dir():
        raise NotFoundError(f"no input folder {folder} (--dataset imagefolder:PATH)")
    try:
        tasks = task_stream(args.dataset, args.split, args.tasks, args.image_size, args.seed)
    except ValueError as e:  # unknown dataset, too few classes for the tasks, a folder without classes
        raise UsageError(str(e)) from e
    return _encoded(tasks, "raw" if args.format == "raw" else "png", args.per_task, args.seed)


def send_order(task, seed: int) -> list[int]:
    """A task's images in a seeded shuffled order: mnist5k is sorted by class, so the first
    ``--per-task`` images in dataset order would all be one class, and the probe could measure nothing."""
    return np.random.default_rng(seed + task.task_id).permutation(len(task.labels)).tolist()


def _encoded(tasks, fmt: str, per_task: int, seed: int) -> Iterator[Item]:
    for task in tasks:
        pixels = task.images.permute(0, 2, 3, 1).numpy()
        for i in send_order(task, seed)[:per_task or len(pixels)]:
            payload, content_type, extra = encode_image(pixels[i], fmt)
            yield Item(payload, content_type, str(task.task_id), int(task.labels[i]), extra)


def parquet_items(args) -> Iterator[Item]:
    """Opens the file now (so a missing or broken one fails before anything is sent), reads lazily."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(args.parquet).is_file():
        raise NotFoundError(f"no Parquet file {args.parquet} (--parquet)")
    try:
        table = pq.ParquetFile(args.parquet)
    except pa.ArrowInvalid as e:
        raise UsageError(f"{args.parquet} is not a Parquet file: {e}") from e
    return _parquet_rows(table, args)


def _parquet_rows(table, args) -> Iterator[Item]:
    from streamd.service.ingest import sniff_content_type

    per_task: dict[str, int] = {}
    for batch in table.iter_batches(batch_size=256):
        cols = batch.to_pydict()
        for i, payload in enumerate(cols[args.image_column]):
            task = str(cols[args.task_column][i]) if args.task_column in cols else "0"
            per_task[task] = per_task.get(task, 0) + 1
            if args.per_task and per_task[task] > args.per_task:
                continue
            label = cols[args.label_column][i] if args.label_column in cols else None
            content_type = (cols.get("content_type") or [None] * (i + 1))[i] or sniff_content_type(payload) or ""
            yield Item(payload, content_type, task, None if label is None else int(label))


class KafkaOut:
    """One message per image, or (``--format arrow``) one Arrow message per batch within a task."""

    def __init__(self, args):
        from kafka.errors import KafkaConfigurationError, KafkaTimeoutError

        from streamd.connectors.kafka import KafkaSink

        try:
            self.sink = KafkaSink(args.bootstrap_servers, args.topic, parse_client_options(args.client_option))
        except KafkaTimeoutError as e:  # kafka-python's bootstrap: refused, unknown host, nothing answering
            raise UnreachableError(f"cannot reach the Kafka broker at {args.bootstrap_servers}: no answer within "
                                   "bootstrap_timeout_ms (refused, unknown host or not listening)") from e
        except (KafkaConfigurationError, ValueError) as e:  # e.g. an unknown --client-option
            raise UsageError(f"invalid Kafka client settings: {e}") from e
        self.headers, self.arrow, self.arrow_batch = args.headers, args.format == "arrow", args.arrow_batch
        self.pending: list[Item] = []
        self.messages = 0

    def put(self, item: Item) -> None:
        if not self.arrow:
            headers = {CONTENT_TYPE_HEADER: item.content_type, **item.extra}
            if self.headers:
                headers.update(image_headers(item.task, item.label))
            self.sink.send(item.payload, headers)
            self.messages += 1
            return
        if self.pending and self.pending[0].task != item.task:
            self._send_batch()
        self.pending.append(item)
        if len(self.pending) >= self.arrow_batch:
            self._send_batch()

    def _send_batch(self) -> None:
        batch, self.pending = self.pending, []
        labels = [-1 if i.label is None else i.label for i in batch] if self.headers else None
        tasks = [i.task for i in batch] if self.headers else None
        self.sink.send(arrow_message([i.payload for i in batch], [i.content_type for i in batch], labels, tasks),
                       {CONTENT_TYPE_HEADER: ARROW_CONTENT_TYPE})
        self.messages += 1

    def close(self) -> None:
        if self.pending:
            self._send_batch()
        self.sink.flush()
        self.sink.close()


class DirOut:
    """``[task-NNN/]SEQUENCE.ext`` files (names sort in sending order), sidecars for label/shape."""

    def __init__(self, args):
        from streamd.connectors.directory import DirectoryWriter

        if args.format == "arrow":
            raise UsageError("--format arrow is for Kafka; a directory gets one file per image (png or raw)")
        self.writer, self.headers = DirectoryWriter(args.out), args.headers
        self.messages = 0

    def put(self, item: Item) -> None:
        name = f"{self.messages:09d}{_EXTENSIONS.get(item.content_type, '.bin')}"
        sidecar = {"shape": item.extra[SHAPE_HEADER]} if SHAPE_HEADER in item.extra else {}
        if self.headers:
            name = f"{task_folder(item.task)}/{name}"
            if item.label is not None:
                sidecar["label"] = item.label
        try:
            self.writer.write(name, item.payload, sidecar or None)
        except OSError as e:
            raise LocalIOError(f"cannot write into {self.writer.root}: {os_error_text(e)}") from e
        self.messages += 1

    def close(self) -> None:
        pass


def task_folder(task: str) -> str:
    return f"task-{int(task):03d}" if task.isdigit() else "task-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def parse_client_options(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs for kafka-python (ints and booleans converted)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--client-option needs KEY=VALUE, got {pair!r}")
        options[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
    return options


def run(args) -> int:
    if args.sink == "dir" and not args.out:
        raise UsageError("streamd produce dir needs --out DIR")
    items = parquet_items(args) if args.parquet else dataset_items(args)
    out = KafkaOut(args) if args.sink == "kafka" else DirOut(args)
    start, sent, tasks = time.monotonic(), 0, []
    try:
        for item in items:
            if args.count and sent >= args.count:
                break
            if args.rate:
                time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
            out.put(item)
            sent += 1
            if not tasks or tasks[-1] != item.task:
                tasks.append(item.task)
    finally:
        out.close()
    print(json.dumps({"images": sent, "messages": out.messages, "tasks": tasks,
                      "seconds": round(time.monotonic() - start, 3)}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "produce", help="push images into Kafka or a folder as a sequence of tasks",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  streamd produce dir --out /tmp/stream --dataset mnist5k --split class --tasks 5\n"
               "  streamd produce kafka --bootstrap-servers localhost:9092 --topic images --format arrow --rate 500\n"
               "  streamd produce dir --out /tmp/stream --parquet images.parquet --no-headers\n"
               "Kafka keeps order only within a partition: give the topic one partition (or one per\n"
               "independent stream) when the task order matters.")
    p.add_argument("sink", choices=("kafka", "dir"), help="where the images go")
    src = p.add_argument_group("images")
    src.add_argument("--dataset", default="mnist5k", help="mnist5k, digits or imagefolder:PATH (default mnist5k)")
    src.add_argument("--split", default="class", choices=("class", "rotation", "permutation", "colour"),
                     help="how the dataset becomes tasks (default class)")
    src.add_argument("--tasks", type=int, default=5, help="number of tasks (default 5)")
    src.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    src.add_argument("--image-size", type=int, default=32, help="side of the square images sent (default 32)")
    src.add_argument("--parquet", help="send this Parquet file's image column instead of a dataset")
    src.add_argument("--image-column", default="image", help="Parquet image column (default image)")
    src.add_argument("--label-column", default="label", help="Parquet label column, if any (default label)")
    src.add_argument("--task-column", default="task", help="Parquet task column, if any (default task)")
    how = p.add_argument_group("sending")
    how.add_argument("--headers", action=argparse.BooleanOptionalAction, default=True,
                     help=f"attach task and label ({TASK_HEADER}, {LABEL_HEADER}; for dir: task-NNN/ folders and "
                          "sidecars); --no-headers leaves boundaries to drift detection (default on)")
    how.add_argument("--format", choices=FORMATS, default="png",
                     help="png or raw uint8 per image, or arrow: Arrow IPC messages of many images (Kafka only)")
    how.add_argument("--arrow-batch", type=int, default=64, help="images per Arrow message (default 64)")
    how.add_argument("--rate", type=float, default=0.0, help="images per second, 0 = as fast as possible")
    how.add_argument("--count", type=int, default=0, help="stop after this many images in all, 0 = all")
    how.add_argument("--per-task", type=int, default=0, help="at most this many images per task, 0 = all")
    kafka = p.add_argument_group("kafka")
    kafka.add_argument("--bootstrap-servers", default="localhost:9092", help="HOST:PORT[,HOST:PORT]")
    kafka.add_argument("--topic", default="streamd-images", help="topic to produce to (default streamd-images)")
    kafka.add_argument("--client-option", action="append", metavar="KEY=VALUE",
                       help="kafka-python producer setting, repeatable (security_protocol=SASL_SSL, ...)")
    folder = p.add_argument_group("dir")
    folder.add_argument("--out", help="folder to write into (dir sink)")
    p.set_defaults(func=run)
