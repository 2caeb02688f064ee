"""Live forgetting and drift probes on small held-out samples of each task.

A few rows of every task (each with probability 1/``hold_out_every``, until ``per_task`` are kept;
random, so that a periodic pattern in the stream cannot bias the sample) never reach the learner. Every ``every_steps`` steps, and when forced at a task end, the prober embeds each task's
probe set with the current encoder and measures:

- labelled tasks: weighted-kNN accuracy (even rows are the bank, odd rows the queries), the row of
  the live accuracy matrix for the current task, and forgetting = best accuracy so far - current;
- every task with a task-end reference: representation drift = 1 - linear CKA between the current
  features and the features the encoder gave at the end of that task;
- all probe rows together, labelled or not: collapse signals (``streamd.learning.health``).

Results go to the Prometheus gauges and, as long rows (step, time, task, current_task, metric,
value), to a Parquet history folder (one part file per measurement, compacted now and then).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from streamd import durable
from streamd.learning.evaluation import knn_accuracy
from streamd.learning.health import representation_health
from streamd.service.metrics import Metrics
from streamd.learning.similarity import linear_cka

log = logging.getLogger(__name__)

HISTORY_SCHEMA = pa.schema([("step", pa.int64()), ("time", pa.float64()), ("task", pa.int64()),
                            ("current_task", pa.int64()), ("metric", pa.string()), ("value", pa.float64())])
GLOBAL = -1  # the task column of rows that are not about one task
MIN_ROWS = 4  # fewer probe rows (or one class only) give no kNN accuracy / CKA


class Prober:
    def __init__(self, per_task: int = 64, every_steps: int = 200, history_path: Path | None = None,
                 metrics: Metrics | None = None, hold_out_every: int = 8, max_tasks: int = 32,
                 compact_after: int = 64, seed: int = 0, max_pending_rows: int = 10_000):
        self.per_task = per_task
        self.every_steps = every_steps
        self.history = History(Path(history_path), compact_after, max_pending_rows, metrics) if history_path else None
        self.metrics = metrics
        self.hold_out_every = hold_out_every
        self.max_tasks = max_tasks  # bounds memory and the task label set of the per-task gauges
        self.sets: dict[int, dict] = {}        # task -> {"images": uint8 (N,C,H,W), "labels": int64 (N,)}
        self.reference: dict[int, torch.Tensor] = {}  # task -> features at the end of that task
        self.best: dict[int, float] = {}
        self.matrix: dict[int, dict[int, float]] = {}  # current task -> {task: accuracy}, latest measure
        self.last_step = 0
        self.last_result: dict | None = None
        self.rng = torch.Generator().manual_seed(seed)

    # Held-out sample --------------------------------------------------------------------------------
    def hold_out(self, images_uint8: torch.Tensor, labels: torch.Tensor | None, task: int):
        """Keeps each row with probability 1/``hold_out_every`` until the task's probe set is full;
        returns the other rows (what the learner trains on) and the mask of those rows."""
        n = images_uint8.shape[0]
        labels = torch.full((n,), -1, dtype=torch.long) if labels is None else labels.long()
        probe = self.sets.get(task)
        if probe is None:
            probe = self._new_set(task, images_uint8)
        room = self.per_task - probe["images"].shape[0]
        keep = torch.ones(n, dtype=torch.bool)
        if room <= 0:
            return images_uint8, labels, keep
        held = (torch.rand(n, generator=self.rng) * self.hold_out_every < 1).nonzero().flatten()[:room]
        if len(held) == 0:
            return images_uint8, labels, keep
        probe["images"] = torch.cat([probe["images"], images_uint8[held].cpu()])
        probe["labels"] = torch.cat([probe["labels"], labels[held].cpu()])
        keep[held] = False
        return images_uint8[keep], labels[keep], keep

    def _new_set(self, task: int, like: torch.Tensor) -> dict:
        if len(self.sets) >= self.max_tasks:
            oldest = min(self.sets)
            for table in (self.sets, self.reference, self.best):
                table.pop(oldest, None)
            if self.metrics is not None:
                self.metrics.forget_task_labels(oldest)
        self.sets[task] = {"images": torch.zeros((0, *like.shape[1:]), dtype=torch.uint8),
                           "labels": torch.zeros(0, dtype=torch.long)}
        return self.sets[task]

    # Measuring --------------------------------------------------------------------------------------
    def on_task_end(self, learner, task: int) -> None:
        """Remembers the features of the task's probe set at its end: the drift reference."""
        if task in self.sets and len(self.sets[task]["images"]):
            self.reference[task] = learner.embed(self.sets[task]["images"], task=task)

    def maybe_measure(self, learner, step: int, force: bool = False,
                      training: dict[str, float] | None = None) -> dict | None:
        """Measures when due (or ``force``); ``training`` figures (loss, throughput) join the history."""
        if not self.sets or (not force and step - self.last_step < self.every_steps):
            return None
        self.last_step = step
        current = learner.task
        accuracy, drift, every_feature = {}, {}, []
        for task, probe in self.sets.items():
            if not len(probe["images"]):
                continue
            feats = learner.embed(probe["images"], task=task)
            every_feature.append(feats)
            acc = _knn_on_probe(feats, probe["labels"])
            if acc is not None:
                accuracy[task] = acc
                self.best[task] = max(self.best.get(task, acc), acc)
            ref = self.reference.get(task)
            if ref is not None and len(ref) >= MIN_ROWS:  # debiased CKA needs n > 3
                cka = float(linear_cka(feats[: len(ref)], ref, debiased=True))
                drift[task] = min(1.0, max(0.0, 1.0 - cka))  # the debiased estimate may leave [0, 1] a bit
        forgetting = {t: self.best[t] - a for t, a in accuracy.items() if t < current}
        forgetting_mean = sum(forgetting.values()) / len(forgetting) if forgetting else 0.0
        if accuracy:
            self.matrix[current] = dict(accuracy)
        health = representation_health(torch.cat(every_feature)) if every_feature else None
        result = {"step": step, "task": current, "accuracy": accuracy, "forgetting": forgetting,
                  "forgetting_mean": forgetting_mean, "drift": drift, "health": health or {}}
        self._export(result, training or {})
        self.last_result = result
        return result

    def headline(self) -> str:
        """The last measurement in a few words, for the daemon's progress line."""
        r = self.last_result
        if r is None:
            return "probe -"
        words = []
        if r["accuracy"]:
            words.append(f"acc {sum(r['accuracy'].values()) / len(r['accuracy']):.3f} fgt {r['forgetting_mean']:.3f}")
        if r["health"]:
            words.append(f"spread {r['health']['std_ratio']:.2f}")
        return "probe " + (" ".join(words) or "-")

    def _export(self, result: dict, training: dict[str, float]) -> None:
        rows = [(GLOBAL, "forgetting_mean", result["forgetting_mean"])]
        for name in ("accuracy", "forgetting", "drift"):
            rows += [(task, name, value) for task, value in result[name].items()]
        if self.metrics is not None:
            m = self.metrics
            gauges = {"accuracy": m.probe_accuracy, "forgetting": m.probe_forgetting, "drift": m.representation_drift}
            for task, name, value in rows[1:]:
                gauges[name].labels(str(task)).set(value)
            m.forgetting_mean.set(result["forgetting_mean"])
            health_gauges = {"std_ratio": m.representation_std_ratio, "effective_rank": m.representation_effective_rank}
            for name, value in result["health"].items():
                health_gauges[name].set(value)
        rows += [(GLOBAL, name, value) for name, value in result["health"].items()]
        rows += [(GLOBAL, name, value) for name, value in training.items() if math.isfinite(value)]
        if self.history is not None:
            now = time.time()
            self.history.append([{"step": result["step"], "time": now, "task": task, "current_task": result["task"],
                                  "metric": name, "value": float(value)} for task, name, value in rows])

    # State ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"sets": {t: dict(s) for t, s in self.sets.items()}, "reference": dict(self.reference),
                "best": dict(self.best), "matrix": {i: dict(r) for i, r in self.matrix.items()},
                "last_step": self.last_step, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sets = {t: dict(s) for t, s in state.get("sets", {}).items()}
        self.reference = dict(state.get("reference", {}))
        self.best = dict(state.get("best", {}))
        self.matrix = {i: dict(r) for i, r in state.get("matrix", {}).items()}
        self.last_step = state.get("last_step", 0)
        if "rng" in state:
            self.rng.set_state(state["rng"])


def _knn_on_probe(feats: torch.Tensor, labels: torch.Tensor) -> float | None:
    """kNN accuracy with every other labelled row of each class as the bank, the rest as queries."""
    rows = (labels >= 0).nonzero().flatten()
    if len(rows) < MIN_ROWS or labels[rows].unique().numel() < 2:
        return None
    rows = rows[labels[rows].argsort(stable=True)]  # grouped by class, so both halves hold every class
    bank, queries = rows[0::2], rows[1::2]
    return knn_accuracy(feats[bank], labels[bank], feats[queries], labels[queries])


class History:
    """Append-only Parquet history: one part file per append, merged into one after ``compact_after``
    parts. A crash during a merge can leave duplicate rows; ``read_history`` drops them.

    While the folder cannot be written, rows wait in memory for the next try, at most
    ``max_pending_rows`` of them: the oldest are dropped and counted, so a broken disk cannot grow
    the daemon's memory without bound. A failure episode is logged when it starts, when it starts
    dropping and when it ends, not per row or per try."""

    def __init__(self, folder: Path, compact_after: int = 64, max_pending_rows: int = 10_000,
                 metrics: Metrics | None = None):
        self.folder = folder
        self.compact_after = compact_after
        self.max_pending_rows = max_pending_rows
        self.metrics = metrics
        self.pending: list[dict] = []
        self.failing = False
        self.dropped = 0  # rows dropped in the current failure episode

    def append(self, rows: list[dict]) -> None:
        self.pending += rows
        try:
            self._flush()
        except OSError as e:
            self._failed(e)
            return
        if self.failing:
            log.warning("probe history %s writable again; %d rows were dropped meanwhile", self.folder, self.dropped)
            self.failing, self.dropped = False, 0

    def _failed(self, error: OSError) -> None:
        if not self.failing:
            log.error("probe history write to %s failed (%s); keeping up to %d rows in memory for the next tries",
                      self.folder, error, self.max_pending_rows)
            self.failing = True
        overflow = len(self.pending) - self.max_pending_rows
        if overflow <= 0:
            return
        if not self.dropped:
            log.error("probe history backlog full: dropping the oldest rows (counted in "
                      "streamd_probe_history_rows_dropped_total) until %s is writable", self.folder)
        del self.pending[:overflow]
        self.dropped += overflow
        if self.metrics is not None:
            self.metrics.probe_history_rows_dropped.inc(overflow)

    def _flush(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        parts = self._parts()
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        self._write(pa.Table.from_pylist(self.pending, HISTORY_SCHEMA), number)
        self.pending = []
        if len(parts) + 1 > self.compact_after:
            self._write(read_history(self.folder), number)  # over the newest part, then drop the rest
            for old in parts:
                old.unlink()

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def _write(self, table: pa.Table, number: int) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        durable.atomic_write(self.folder / f"part-{number:09d}.parquet", sink.getvalue().to_pybytes())


def read_history(path: Path) -> pa.Table:
    """All rows of a history folder (or one Parquet file), duplicates dropped, ordered by step."""
    path = Path(path)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files:
        return HISTORY_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=HISTORY_SCHEMA) for f in files])
    grouped = table.group_by(["step", "task", "current_task", "metric"], use_threads=False).aggregate(
        [("time", "max"), ("value", "last")])
    columns = {name: grouped[name] for name in ("step", "task", "current_task", "metric")}
    columns.update(time=grouped["time_max"], value=grouped["value_last"])
    return pa.table(columns, schema=HISTORY_SCHEMA).sort_by([("step", "ascending"), ("metric", "ascending"),
                                                             ("task", "ascending")])
