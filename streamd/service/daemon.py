"""The daemon loop: source -> ingest -> boundary -> learner.step -> checkpoint -> commit.

Records are acked only after they were trained on (or dead-lettered); the checkpoint holds the
whole state together with the acked positions, and the source commits only what a durable
checkpoint covers. A crash therefore replays the records after the last checkpoint and skips none.

One loop serves one process and each ``torchrun`` rank (docs/scaling.md): the daemon holds a
``Cluster`` (a no-op with one rank). Every step is a *round* (``_round``) in which the ranks agree
on rows, rank 0's task, frozen prefix and checkpoint, and any stop, then step together (a rank
without rows with weight 0); each iteration ends with rounds until one where no rank has rows, a
point all ranks share. Boundaries, probes, snapshots and the API are rank 0's.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field

import torch

from streamd.service.batching import Batcher, PendingBatch
from streamd.connectors.base import DeadLetterSink, Record, Source
from streamd.service.boundary import Boundary, build_boundary_detector
from streamd.service.checkpoint import load_checkpoint, save_checkpoint
from streamd.config import StreamdConfig
from streamd.service.dead_letter_retry import DeadLetterOffice
from streamd.service.distributed import Agreement, Cluster, weights_digest
from streamd.service.ingest import DecodeError, decode, expand, parse_label, parse_task
from streamd.learning.learner import Learner
from streamd.service.metrics import Metrics
from streamd.service.wiring import (build_dead_letter, build_learner_from, build_prober, build_publisher, build_source,
                            rank_config)

log = logging.getLogger("streamd.daemon")

POLL_TIMEOUT_S = 0.2
# --exit-when-idle: before the first record, a source may still be connecting (a Kafka group join
# waits for the session timeout of a crashed member), so an empty start is not "drained" yet.
STARTUP_GRACE_S = 30.0


@dataclass
class Counters:
    """Acked records, cumulative over restarts: restored from the checkpoint with the positions they count."""

    records_seen: int = 0
    records_decoded: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    images_trained: int = 0
    checkpoints: int = 0
    checkpoint_failures: int = 0
    snapshots: int = 0


class Daemon:
    def __init__(self, cfg: StreamdConfig, source: Source | None = None, dead_letter: DeadLetterSink | None = None,
                 cluster: Cluster | None = None):
        self.cluster = cluster or Cluster()
        self.cfg = cfg = rank_config(cfg, self.cluster)
        self.metrics = Metrics()
        self.learner: Learner = build_learner_from(cfg)
        self.boundary = build_boundary_detector(cfg.boundary)
        self.prober = build_prober(cfg, self.metrics)
        self.publisher = build_publisher(cfg, self.metrics)
        self.source = source or build_source(cfg, self.metrics)
        self.dead_letters = DeadLetterOffice(dead_letter or build_dead_letter(cfg), self.metrics,
                                             cfg.dead_letter.max_backlog)
        self.counters = Counters()
        self.batcher = Batcher(cfg.learner)
        self.audit = open(cfg.audit_log, "a", buffering=1) if cfg.audit_log else None
        self.api = None
        self.ready = self.stopping = self.stop_requested = False
        self.resumed_from: str | None = None
        now = self.started = time.monotonic()
        self.last_checkpoint = self.last_snapshot = self.last_progress = now
        self.idle_since: float | None = None  # when the source last came back empty after records
        self.got_records = False              # --exit-when-idle counts only once records came (or the grace passed)
        self.exit_when_idle: float | None = None
        self.steps_at_checkpoint = self.steps_at_snapshot = self.trained_at_progress = 0
        self.dirty = False  # something was acked since the last durable checkpoint
        self.checkpoint_wanted: str | None = None   # rank 0: why a checkpoint is due at the next round
        self.last_loss = self.last_rate = float("nan")   # of the last step / progress interval

    # The loop ---------------------------------------------------------------------------------
    def run(self, exit_when_idle: float | None = None) -> dict:
        self.started, self.exit_when_idle = time.monotonic(), exit_when_idle
        try:
            self._restore()
            self._start_api()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._request_stop)
            self.ready = True
            log.info("daemon ready: source %s, task %d, step %d", self.source.name, self.learner.task,
                     self.learner.step_count)
            while not self.stopping:
                self._ack(self.dead_letters.retry())
                records = self._poll()
                self.idle_since = None if records else (self.idle_since or time.monotonic())
                self.got_records = self.got_records or bool(records)
                self._ingest(records)
                if self.batcher.due(self._drained()):
                    self._train(self.batcher.take())
                self._periodic()
            self._shutdown()
        finally:
            self.cluster.close()
        return self.summary(time.monotonic() - self.started)

    def _poll(self) -> list[Record]:
        """The next records, unless too many dead letters wait for a broken sink (then nothing new is read)."""
        if self.dead_letters.full:
            time.sleep(POLL_TIMEOUT_S)
            return []
        return self.source.poll(self.cfg.learner.batch_size, POLL_TIMEOUT_S)

    def _request_stop(self, signum, frame) -> None:
        log.info("%s received: finishing the step, then checkpoint and exit", signal.Signals(signum).name)
        self.stop_requested = True

    def _drained(self) -> bool:
        """``--exit-when-idle``: the source was empty that long (after records came, or the start-up
        grace passed), so no more images will come."""
        if self.exit_when_idle is None or self.idle_since is None:
            return False
        now = time.monotonic()
        warmed_up = self.got_records or now - self.started >= max(self.exit_when_idle, STARTUP_GRACE_S)
        return now - self.idle_since >= self.exit_when_idle and warmed_up

    # Ingest -----------------------------------------------------------------------------------
    def _ingest(self, records: list[Record]) -> None:
        for message in records:
            try:
                parts = expand(message)
            except DecodeError as e:
                self.metrics.records_consumed.inc()
                self._dead_letter(message, e.reason)
                continue
            for record in parts:
                self.metrics.records_consumed.inc()
                try:
                    header, label = parse_task(record), parse_label(record)
                    image = decode(record, self.cfg.model.image_size)
                except DecodeError as e:
                    self._dead_letter(record, e.reason)
                    continue
                self.metrics.records_decoded.inc()
                closed = self.batcher.add(record, image, label, header if self.cfg.boundary.mode != "drift" else None)
                if closed is not None:   # a new task header: the batch before it trains first
                    self._train(closed)
        if records:
            self.metrics.last_record_timestamp.set(time.time())
        pending = self.batcher.pending
        if pending.acks and not pending.images:  # only dead letters: nothing to wait for
            self._ack(self.batcher.take().acks)

    def _dead_letter(self, record: Record, reason: str) -> None:
        """Acked once its dead letter is written; until then it waits, un-acked, for a retry."""
        if self.dead_letters.send(record, reason):
            self.batcher.add_dead(record, reason)

    # Train ------------------------------------------------------------------------------------
    def _train(self, batch: PendingBatch) -> None:
        images, labels = torch.stack(batch.images), torch.tensor(batch.labels)
        boundary = None
        if self.cluster.is_main:
            boundary = self.boundary.observe(images, batch.header, batch.first_position, self.learner.embed)
            if self.boundary.statistic is not None:
                self.metrics.drift_statistic.set(self.boundary.statistic)
            if boundary is not None:
                self.checkpoint_wanted = "task_end"

        def step() -> None:
            train_images, train_labels, kept = images, labels, torch.ones(len(images), dtype=torch.bool)
            if self.cluster.is_main:
                train_images, train_labels, kept = self.prober.hold_out(images, labels, self.learner.task)
            if len(train_images):
                self._step(train_images, train_labels)
            else:
                self.cluster.idle_step(self.learner)
            self._ack(batch.acks_with_held_out(kept))

        self._round(len(images), step, boundary)
        if self.cluster.is_main:
            self._measure()

    def _round(self, rows: int, step, boundary: Boundary | None, idle: bool = False) -> Agreement:
        """One meeting of the ranks (see the module docstring); with one rank, this rank's own decisions."""
        a = self.cluster.agree(rows, self.boundary.task, self.learner.encoder.frozen_blocks,
                               self.checkpoint_wanted is not None, self.stop_requested, idle)
        if a.task != self.learner.task and boundary is not None:
            self._end_task(boundary)
        self.cluster.apply(a, self.learner)
        self.metrics.current_task.set(self.learner.task)
        if a.checkpoint:   # before the step: a task-end checkpoint holds the new task, untrained yet
            self._checkpoint(self.checkpoint_wanted or "steps")
        if a.rows:
            step() if step is not None else self.cluster.idle_step(self.learner)
            self.cluster.after_step(self.learner)
            self.dirty = True   # every rank's weights moved, whoever had the rows
            if self.audit and self.cluster.enabled:
                self.audit.write(f"weights\t{self.learner.step_count}\t{weights_digest(self.learner)}\n")
        return a

    def _measure(self, force: bool = False) -> dict | None:
        """A probe measurement when due; the last step's loss and throughput go into its history."""
        return self.prober.maybe_measure(self.learner, self.learner.step_count, force=force,
                                         training={"loss": self.last_loss, "images_per_second": self.last_rate})

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One learner step and its metrics; this rank's gradients count with its number of rows."""
        t0 = time.perf_counter()
        with self.cluster.weighted(len(images)):
            result = self.learner.step(images, labels)
        self.metrics.step_duration.observe(time.perf_counter() - t0)
        if result.skipped:
            self.metrics.nonfinite_steps.inc()
            self.cluster.idle_step(self.learner)   # the other ranks are already in the gradient all-reduce
        else:
            self.metrics.training_steps.inc()
            self.metrics.loss.set(result.loss)
            self.last_loss = result.loss
        self.counters.images_trained += len(images)

    def _end_task(self, boundary: Boundary) -> None:
        """Task-end work for the task that just ended: probe, reference features, a snapshot."""
        self.metrics.task_boundaries.labels(boundary.kind).inc()
        probe = self._measure(force=True)
        self.prober.on_task_end(self.learner, self.learner.task)
        self._snapshot("task_end", probe)

    def _ack(self, acks: list[tuple[Record, str]]) -> None:
        """Acked records are what the checkpoint's positions cover, so the counters count them here."""
        if not acks:
            return
        self.source.ack([r for r, _ in acks])
        self.dirty = True
        c = self.counters
        for _, status in acks:
            c.records_seen += 1
            if status in ("trained", "held_out"):
                c.records_decoded += 1
            else:
                reason = status.removeprefix("dead:")
                c.dead_lettered[reason] = c.dead_lettered.get(reason, 0) + 1
        if self.audit:
            self.audit.write("".join(f"{status}\t{r.position}\n" for r, status in acks))

    # Durability and publishing ----------------------------------------------------------------
    def _periodic(self) -> None:
        now, steps = time.monotonic(), self.learner.step_count
        ck, sn = self.cfg.checkpoint, self.cfg.snapshots
        if self.cluster.is_main and self.dirty and (
                (ck.every_steps and steps - self.steps_at_checkpoint >= ck.every_steps)
                or (ck.every_seconds and now - self.last_checkpoint >= ck.every_seconds)):
            self.checkpoint_wanted = self.checkpoint_wanted or "steps"
        while True:   # rounds without own rows until no rank has any: a point all ranks share
            a = self._round(0, None, None, idle=not self.batcher.pending.acks and self._drained())
            if a.rows == 0:
                break
        if a.stop or a.idle == self.cluster.world_size:
            log.info("stopping: %s", "a stop was requested" if a.stop else "sources drained")
            self.stopping = True
        if steps > self.steps_at_snapshot and ((sn.every_steps and steps - self.steps_at_snapshot >= sn.every_steps)
                                               or (sn.every_seconds and now - self.last_snapshot >= sn.every_seconds)):
            self._snapshot("steps" if sn.every_steps and steps - self.steps_at_snapshot >= sn.every_steps
                           else "interval")
        if now - self.last_progress >= self.cfg.logging.progress_seconds:
            self._progress(now)

    def _checkpoint(self, reason: str) -> bool:
        """Writes the whole state; commits the source only once it is durable. Never raises OSError.
        All ranks call it together (a round's agreement, or the shutdown)."""
        self.checkpoint_wanted = None
        positions = self.cluster.gather_positions(self.source.position_state())
        self.counters.checkpoints += 1
        state = {"learner": self.learner.state_dict(), "boundary": self.boundary.state_dict(),
                 "probe": self.prober.state_dict(), "positions": positions, "counters": asdict(self.counters),
                 "source": self.source.name,
                 "timestamps": {**self.metrics.timestamps(), "checkpoint_last_timestamp": time.time()}}
        self.last_checkpoint, self.steps_at_checkpoint = time.monotonic(), self.learner.step_count
        try:
            folder = save_checkpoint(self.cfg.checkpoint.dir, self.learner.step_count, state, self.cfg.checkpoint.keep)
        except OSError as e:
            self.counters.checkpoints -= 1
            self.counters.checkpoint_failures += 1
            self.metrics.checkpoint_failures.inc()
            log.error("checkpoint (%s) failed: %s; sources are not committed, %s", reason, e,
                      "stopping without it: what was read since the last durable checkpoint is read again after "
                      "a restart" if reason == "shutdown" else "training goes on")
            return False
        self.dirty = False
        self.metrics.checkpoint_last_timestamp.set(time.time())
        if self.audit:
            self.audit.write(f"checkpoint\t{folder.name}\n")
        committed = self.source.commit(positions) is not False
        self.metrics.source_commit_failures.inc(0 if committed else 1)
        log.info("checkpoint %s (%s) durable; source %s", folder.name, reason, "committed" if committed else "NOT committed")
        return True

    def _snapshot(self, reason: str, probe: dict | None = None) -> None:
        if not self.cluster.is_main:
            return
        manifest = self.publisher.publish(self.learner, reason=reason, task=max(self.learner.task, 0),
                                          segment=len(self.boundary.boundaries),
                                          positions=self.cluster.positions(self.source.position_state()),
                                          probe=probe or self._measure(force=True))   # the gate judges fresh figures
        self.last_snapshot, self.steps_at_snapshot = time.monotonic(), self.learner.step_count
        if manifest is not None:
            self.counters.snapshots += 1

    def _progress(self, now: float) -> None:
        rate = (self.counters.images_trained - self.trained_at_progress) / max(1e-9, now - self.last_progress)
        self.last_progress, self.trained_at_progress = now, self.counters.images_trained
        lag = self.source.lag()
        self.metrics.observe_plugins(self.learner)  # here, not per step: some plugins' gauges cost a pass over masks
        self.metrics.images_per_second.set(rate)
        self.last_rate = rate
        if lag is not None:
            self.metrics.consumer_lag.set(lag)
        c = self.counters
        log.info("records %d (dead-lettered %d) | steps %d | %.1f img/s | loss %.4f | task %d | lag %s | %s",
                 c.records_seen, sum(c.dead_lettered.values()), self.learner.step_count, rate, self.last_loss,
                 self.learner.task, "?" if lag is None else lag, self.prober.headline())

    # Start and stop ---------------------------------------------------------------------------
    def _restore(self) -> None:
        state = load_checkpoint(self.cfg.checkpoint.dir)
        if self.audit:
            self.audit.write(f"start\t{os.getpid()}\n")
        if state is None:
            log.info("no checkpoint in %s: starting fresh", self.cfg.checkpoint.dir)
        else:
            self.learner.load_state_dict(state["learner"])
            self.boundary.load_state_dict(state["boundary"])
            self.prober.load_state_dict(state["probe"])
            self.counters = Counters(**state["counters"])
            self.metrics.restore_timestamps(state.get("timestamps", {}))  # keeps the stall/stale alerts armed
        positions = self.cluster.adopt_main_state(self.learner, state["positions"] if state else None)
        if positions is not None:
            self.source.seek(positions)
        self.steps_at_checkpoint = self.steps_at_snapshot = self.learner.step_count
        self.metrics.current_task.set(self.learner.task)
        if state is not None:
            self.resumed_from = f"step {self.learner.step_count}"
            log.info("resumed from the checkpoint at step %d (task %d); source positions %s",
                     self.learner.step_count, self.learner.task, json.dumps(positions)[:200])
        if self.audit and self.cluster.enabled:
            self.audit.write(f"restored\t{self.learner.step_count}\t{weights_digest(self.learner)}\n")

    def _start_api(self) -> None:
        if not self.cfg.api.enabled or not self.cluster.is_main:
            return
        from streamd.service.api import ApiServer

        token = self.cfg.api.token.get_secret_value() if self.cfg.api.token else None
        self.api = ApiServer(self.cfg.api.host, self.cfg.api.port, self.cfg.snapshots.dir, self.metrics,
                             token=token, ready=lambda: self.ready and not (self.stopping or self.stop_requested)
                             and self.source.problem() is None)
        self.api.start()
        log.info("HTTP API on http://%s:%d (/metrics, /healthz, /readyz, /v1/snapshots)", self.cfg.api.host,
                 self.api.port)

    def _shutdown(self) -> None:
        """The current step is done; un-trained pending records stay un-acked and are read again later."""
        if self.learner.step_count > self.steps_at_snapshot:
            self._snapshot("shutdown")
        if self.cluster.any(self.dirty):
            self._checkpoint("shutdown")
        self.cluster.in_turn(self.source.close)   # one rank at a time leaves the consumer group
        self.dead_letters.close()
        if self.api:
            self.api.stop()
        if self.audit:
            self.audit.close()

    def summary(self, elapsed_s: float) -> dict:
        c = self.counters
        return {"records_seen": c.records_seen, "records_decoded": c.records_decoded,
                "records_dead_lettered": sum(c.dead_lettered.values()), "dead_letter_reasons": c.dead_lettered,
                "images_trained": c.images_trained, "steps": self.learner.step_count,
                "tasks": self.boundary.next_id, "task_ids": self.boundary.task_ids,
                "boundaries": [asdict(b) for b in self.boundary.boundaries],
                "checkpoints": c.checkpoints, "checkpoint_failures": c.checkpoint_failures,
                "snapshots": c.snapshots, "latest_snapshot": self.publisher.latest_version(),
                "resumed_from": self.resumed_from, "elapsed_seconds": round(elapsed_s, 1)}

