"""The daemon loop: source -> ingest -> boundary -> learner.step -> checkpoint -> commit.

Records are acked only after they were trained on (or dead-lettered); the checkpoint holds the
whole state together with the acked positions, and the source commits only what a durable
checkpoint covers. A crash therefore replays the records after the last checkpoint and skips none.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field

import torch

from streamd.connectors.base import DeadLetterSink, Record, Source
from streamd.boundary import Boundary, build_boundary_detector
from streamd.checkpoint import load_checkpoint, save_checkpoint
from streamd.config import StreamdConfig
from streamd.dead_letter_retry import UndeliveredDeadLetters
from streamd.ingest import DecodeError, decode, expand, parse_label, parse_task
from streamd.learner import Learner, StepResult
from streamd.metrics import Metrics
from streamd.wiring import build_dead_letter, build_learner_from, build_prober, build_publisher, build_source

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


@dataclass
class PendingBatch:
    """Decoded images waiting for a step, and every record (trained or dead-lettered) to ack after it."""

    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    acks: list[tuple[Record, str]] = field(default_factory=list)   # (record, audit status)
    header: str | None = None
    first_position: str = ""
    started: float = 0.0


class Daemon:
    def __init__(self, cfg: StreamdConfig, source: Source | None = None, dead_letter: DeadLetterSink | None = None):
        self.cfg = cfg
        self.metrics = Metrics()
        self.learner: Learner = build_learner_from(cfg)
        self.boundary = build_boundary_detector(cfg.boundary)
        self.prober = build_prober(cfg, self.metrics)
        self.publisher = build_publisher(cfg, self.metrics)
        self.source = source or build_source(cfg, self.metrics)
        self.dead_letter = dead_letter or build_dead_letter(cfg)
        self.counters = Counters()
        self.pending = PendingBatch()
        self.undelivered = UndeliveredDeadLetters()
        self.audit = open(cfg.audit_log, "a", buffering=1) if cfg.audit_log else None
        self.api = None
        self.ready = self.stopping = False
        self.resumed_from: str | None = None
        now = time.monotonic()
        self.last_checkpoint = self.last_snapshot = self.last_progress = now
        self.idle_since: float | None = None  # when the source last came back empty after records
        self.steps_at_checkpoint = self.steps_at_snapshot = self.trained_at_progress = 0
        self.dirty = False  # something was acked since the last durable checkpoint
        self.last_loss = self.last_rate = float("nan")   # of the last step / progress interval

    # The loop ---------------------------------------------------------------------------------
    def run(self, exit_when_idle: float | None = None) -> dict:
        started = time.monotonic()
        self._restore()
        self._start_api()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        self.ready, got_records = True, False
        log.info("daemon ready: source %s, task %d, step %d", self.source.name, self.learner.task,
                 self.learner.step_count)
        while not self.stopping:
            self._retry_dead_letters()
            records = self._poll()
            self.idle_since = None if records else (self.idle_since or time.monotonic())
            self._ingest(records)
            got_records = got_records or bool(records)
            idle = time.monotonic() - self.idle_since if self.idle_since else 0.0
            warmed_up = got_records or time.monotonic() - started >= max(exit_when_idle or 0, STARTUP_GRACE_S)
            drained = exit_when_idle is not None and idle >= exit_when_idle and warmed_up
            if self._batch_due() or (drained and self.pending.images):   # drained: no more images will come
                self._train(self._take_batch())
            self._periodic()
            if drained and not self.pending.acks:
                log.info("sources drained for %.1f s: stopping", idle)
                break
        self._shutdown()
        return self.summary(time.monotonic() - started)

    def _poll(self) -> list[Record]:
        """The next records, unless too many dead letters wait for a broken sink (then nothing new is read)."""
        if len(self.undelivered) >= self.cfg.dead_letter.max_backlog:
            time.sleep(POLL_TIMEOUT_S)
            return []
        return self.source.poll(self.cfg.learner.batch_size, POLL_TIMEOUT_S)

    def _request_stop(self, signum, frame) -> None:
        log.info("%s received: finishing the current step, then checkpoint and exit", signal.Signals(signum).name)
        self.stopping = True

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
                self._add(record, image, label, header if self.cfg.boundary.mode != "drift" else None)
        if records:
            self.metrics.last_record_timestamp.set(time.time())
        if self.pending.acks and not self.pending.images:  # only dead letters: nothing to wait for
            self._ack(self._take_batch().acks)

    def _add(self, record: Record, image: torch.Tensor, label: int, header: str | None) -> None:
        """Adds to the pending batch; a change of the task header closes the batch before this record."""
        if self.pending.images and header is not None and header != self.pending.header:
            self._train(self._take_batch())
        p = self.pending
        if not p.images:
            p.header, p.first_position, p.started = header, str(record.position), time.monotonic()
        p.images.append(image)
        p.labels.append(label)
        p.acks.append((record, "trained"))

    def _dead_letter(self, record: Record, reason: str) -> None:
        """Acked once its dead letter is written; until then it waits, un-acked, for a retry."""
        log.warning("dead-lettering %s: %s", record.position, reason)
        if self._send_dead_letter(record, reason):
            self.pending.acks.append((record, f"dead:{reason}"))
        else:
            self.undelivered.add(record, reason)

    def _send_dead_letter(self, record: Record, reason: str) -> bool:
        try:
            self.dead_letter.send(record, reason)
        except Exception as exc:  # noqa: BLE001 -- any sink failure: keep training, keep the record un-acked
            self.metrics.dead_letter_failures.inc()
            log.error("dead-letter sink failed for %s (%s: %s); the record stays un-acked and is retried",
                      record.position, type(exc).__name__, exc)
            return False
        self.metrics.records_dead_lettered.labels(reason).inc()
        return True

    def _retry_dead_letters(self) -> None:
        for record, reason in self.undelivered.due():
            if not self._send_dead_letter(record, reason):
                self.undelivered.failed_again()
                break
            self.undelivered.delivered(record)
            self._ack([(record, f"dead:{reason}")])
        self.metrics.dead_letter_backlog.set(len(self.undelivered))

    def _batch_due(self) -> bool:
        """Full; or waited max_wait with min_batch_size images; or held max_hold, however small."""
        p, lc = self.pending, self.cfg.learner
        if not p.images:
            return False
        waited = time.monotonic() - p.started
        return (len(p.images) >= lc.batch_size or waited >= lc.max_hold_seconds
                or (waited >= lc.max_wait_seconds and len(p.images) >= lc.min_batch_size))

    def _take_batch(self) -> PendingBatch:
        batch, self.pending = self.pending, PendingBatch()
        return batch

    # Train ------------------------------------------------------------------------------------
    def _train(self, batch: PendingBatch) -> None:
        images, labels = torch.stack(batch.images), torch.tensor(batch.labels)
        boundary = self.boundary.observe(images, batch.header, batch.first_position, self.learner.embed)
        if self.boundary.statistic is not None:
            self.metrics.drift_statistic.set(self.boundary.statistic)
        if boundary is not None:
            self._end_task(boundary)
        if self.boundary.task != self.learner.task:
            self.learner.begin_task(self.boundary.task)
            self.metrics.current_task.set(self.learner.task)
        if boundary is not None:
            self._checkpoint("task_end")
        train_images, train_labels, kept = self.prober.hold_out(images, labels, self.learner.task)
        if len(train_images):
            self._step(train_images, train_labels)
        self._ack(with_held_out(batch.acks, kept))
        self._measure()

    def _measure(self, force: bool = False) -> dict | None:
        """A probe measurement when due; the last step's loss and throughput go into its history."""
        return self.prober.maybe_measure(self.learner, self.learner.step_count, force=force,
                                         training={"loss": self.last_loss, "images_per_second": self.last_rate})

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One learner step and its metrics (streamd/distributed_daemon.py wraps it for ranks)."""
        t0 = time.perf_counter()
        result = self.learner.step(images, labels)
        self.metrics.step_duration.observe(time.perf_counter() - t0)
        if result.skipped:
            self.metrics.nonfinite_steps.inc()
        else:
            self.metrics.training_steps.inc()
            self.metrics.loss.set(result.loss)
            self.last_loss = result.loss
        self.counters.images_trained += len(images)
        return result

    def _end_task(self, boundary: Boundary) -> None:
        """Task-end work for the task that just ended: probe, reference features, a snapshot."""
        old = self.learner.task
        self.metrics.task_boundaries.labels(boundary.kind).inc()
        probe = self._measure(force=True)
        self.prober.on_task_end(self.learner, old)
        self._snapshot("task_end", probe)

    def _ack(self, acks: list[tuple[Record, str]]) -> None:
        """Acked records are what the checkpoint's positions cover, so the counters count them here."""
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
        if self.dirty and ((ck.every_steps and steps - self.steps_at_checkpoint >= ck.every_steps)
                           or (ck.every_seconds and now - self.last_checkpoint >= ck.every_seconds)):
            self._checkpoint("steps")
        if steps > self.steps_at_snapshot and ((sn.every_steps and steps - self.steps_at_snapshot >= sn.every_steps)
                                               or (sn.every_seconds and now - self.last_snapshot >= sn.every_seconds)):
            self._snapshot("steps" if sn.every_steps and steps - self.steps_at_snapshot >= sn.every_steps
                           else "interval")
        if now - self.last_progress >= self.cfg.logging.progress_seconds:
            self._progress(now)

    def _checkpoint(self, reason: str) -> bool:
        """Writes the whole state; commits the source only once it is durable. Never raises OSError."""
        positions = self.source.position_state()
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
        log.info("checkpoint %s (%s) durable; source %s", folder.name, reason, "committed" if committed else "NOT committed")
        return True

    def _snapshot(self, reason: str, probe: dict | None = None) -> None:
        manifest = self.publisher.publish(self.learner, reason=reason, task=max(self.learner.task, 0),
                                          segment=len(self.boundary.boundaries),
                                          positions=self.source.position_state(), probe=probe)
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
        log.info("records %d (dead-lettered %d) | steps %d | %.1f img/s | loss %.4f | task %d | lag %s",
                 c.records_seen, sum(c.dead_lettered.values()), self.learner.step_count, rate, self.last_loss,
                 self.learner.task, "?" if lag is None else lag)

    # Start and stop ---------------------------------------------------------------------------
    def _restore(self) -> None:
        state = load_checkpoint(self.cfg.checkpoint.dir)
        if self.audit:
            self.audit.write(f"start\t{os.getpid()}\n")
        if state is None:
            log.info("no checkpoint in %s: starting fresh", self.cfg.checkpoint.dir)
            return
        self.learner.load_state_dict(state["learner"])
        self.boundary.load_state_dict(state["boundary"])
        self.prober.load_state_dict(state["probe"])
        self.counters = Counters(**state["counters"])
        self.source.seek(state["positions"])
        self.steps_at_checkpoint = self.steps_at_snapshot = self.learner.step_count
        self.resumed_from = f"step {self.learner.step_count}"
        self.metrics.current_task.set(self.learner.task)
        self.metrics.restore_timestamps(state.get("timestamps", {}))  # keeps the stall/stale alerts armed
        log.info("resumed from the checkpoint at step %d (task %d); source positions %s", self.learner.step_count,
                 self.learner.task, json.dumps(state["positions"])[:200])

    def _start_api(self) -> None:
        if not self.cfg.api.enabled:
            return
        from streamd.api import ApiServer

        token = self.cfg.api.token.get_secret_value() if self.cfg.api.token else None
        self.api = ApiServer(self.cfg.api.host, self.cfg.api.port, self.cfg.snapshots.dir, self.metrics,
                             ready=lambda: self.ready and not self.stopping and self.source.problem() is None,
                             token=token)
        self.api.start()
        log.info("HTTP API on http://%s:%d (/metrics, /healthz, /readyz, /v1/snapshots)", self.cfg.api.host,
                 self.api.port)

    def _shutdown(self) -> None:
        """The current step is done; un-trained pending records stay un-acked and are read again later."""
        if self.learner.step_count > self.steps_at_snapshot:
            self._snapshot("shutdown")
        if self.dirty:
            self._checkpoint("shutdown")
        if self.undelivered:
            log.warning("%d dead letters could not be written; their records stay un-acked and are read again "
                        "after a restart", len(self.undelivered))
        self.source.close()
        self.dead_letter.close()
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


def with_held_out(acks: list[tuple[Record, str]], kept: torch.Tensor) -> list[tuple[Record, str]]:
    """The batch's acks with the images the prober held out marked ``held_out`` instead of ``trained``."""
    kept_rows = iter(kept.tolist())
    return [(r, status if status != "trained" or next(kept_rows) else "held_out") for r, status in acks]
