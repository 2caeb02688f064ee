"""The daemon loop as one of several ``torchrun`` ranks (see docs/scaling.md).

Each rank runs the ordinary ``Daemon`` loop on its own Kafka partitions; this subclass only adds
the points where the ranks must act together (``streamd/distributed.py`` does the collectives):

- every training step is a *round*: all ranks agree (who has rows, rank 0's task and frozen
  prefix, rank 0's "checkpoint now", stop), then all step together; a rank without a batch
  joins with weight 0. Each loop iteration ends with rounds until one where no rank has rows:
  there all ranks stand at the same point, so that is where they stop together;
- task boundaries are rank 0's (header or drift); probes, snapshots and the HTTP API are rank
  0's alone;
- checkpoints are one per rank (``CHECKPOINT_DIR/rank-NNN/``, written at the same step): the
  same weights, the rank's own replay buffer and counters, and the positions of ALL ranks'
  partitions (gathered just before), so any rank can resume any partition after a rebalance.
  On start every rank loads its own, then takes rank 0's learner state and positions, so all
  ranks restart identical even when a crash hit between two ranks' writes.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from streamd.checkpoint import load_checkpoint
from streamd.config import ConfigError, StreamdConfig
from streamd.daemon import STARTUP_GRACE_S, Daemon, PendingBatch, with_held_out
from streamd.distributed import Agreement, Cluster, merge_positions, weights_digest
from streamd.learner import resolve_device
from streamd.wiring import build_source

log = logging.getLogger("streamd.distributed")


def build_daemon(cfg: StreamdConfig) -> Daemon:
    """The plain daemon, or a rank of a data-parallel group when torchrun started several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Daemon(cfg)
    return RankDaemon(cfg, Cluster.from_env(resolve_device(cfg.learner.device)))


class RankSource:
    """The rank's own source; ``position_state()`` also covers the other ranks' partitions
    (as of the last ``refresh()``, a collective call made right before every checkpoint)."""

    def __init__(self, source, cluster: Cluster):
        self.source, self.cluster = source, cluster
        self.everyone: dict = {}

    def __getattr__(self, name):
        return getattr(self.source, name)

    def refresh(self) -> None:
        self.everyone = self.cluster.gather_positions(self.source.position_state())

    def position_state(self) -> dict:
        return merge_positions([self.everyone, self.source.position_state()])


def _per_rank(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


class RankDaemon(Daemon):
    def __init__(self, cfg: StreamdConfig, cluster: Cluster):
        if cfg.source.kind != "kafka":
            raise ConfigError(f"source.kind {cfg.source.kind!r} cannot be shared by {cluster.world_size} ranks: "
                              "only a Kafka consumer group splits a stream between ranks")
        self.cluster = cluster
        own = {"checkpoint": cfg.checkpoint.model_copy(update={"dir": cfg.checkpoint.dir / f"rank-{cluster.rank:03d}"})}
        if cfg.audit_log:
            own["audit_log"] = _per_rank(cfg.audit_log, cluster.rank)
        super().__init__(cfg.model_copy(update=own), source=RankSource(build_source(cfg), cluster))
        self.checkpoint_wanted: str | None = None   # rank 0: a checkpoint is due at the next round
        self.stop_requested = False
        self.exit_when_idle: float | None = None
        self.started = time.monotonic()
        self.got_records = False   # drained only counts once the source delivered (or the grace passed)

    # Loop ----------------------------------------------------------------------------------------
    def run(self, exit_when_idle: float | None = None) -> dict:
        self.exit_when_idle = exit_when_idle   # decided together, in the last round of an iteration
        self.started = time.monotonic()
        try:
            return super().run(exit_when_idle=None)
        finally:
            self.cluster.close()

    def _request_stop(self, signum, frame) -> None:
        log.info("rank %d: signal %d received; stopping with the other ranks", self.cluster.rank, signum)
        self.stop_requested = True

    def _ingest(self, records) -> None:
        self.got_records = self.got_records or bool(records)
        super()._ingest(records)

    def _drained(self) -> bool:
        """This rank's half of ``--exit-when-idle`` (the base loop's rule, decided by all ranks)."""
        return not self.pending.acks and self._idle_long_enough()

    def _batch_due(self) -> bool:
        """As the base loop: once the source is drained, a partial batch trains at once."""
        return super()._batch_due() or (bool(self.pending.images) and self._idle_long_enough())

    def _idle_long_enough(self) -> bool:
        if self.exit_when_idle is None:
            return False
        now = time.monotonic()
        idle_for = now - self.idle_since if self.idle_since else 0.0
        warmed_up = self.got_records or now - self.started >= max(self.exit_when_idle, STARTUP_GRACE_S)
        return idle_for >= self.exit_when_idle and warmed_up

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
            self._ack(with_held_out(batch.acks, kept))

        self._round(len(images), step, boundary)
        if self.cluster.is_main:
            self._measure()

    def _step(self, images, labels):
        with self.cluster.weighted(len(images)):
            result = super()._step(images, labels)
        if result.skipped:   # the other ranks are already in the gradient all-reduce
            self.cluster.idle_step(self.learner)
        return result

    def _periodic(self) -> None:
        """Rounds without own data until no rank has rows; that round is a common point."""
        while True:
            a = self._round(0, None, None, idle=self._drained())
            if a.rows == 0:
                break
        if a.stop or a.idle == self.cluster.world_size:
            log.info("rank %d: all ranks stop now (%s)", self.cluster.rank,
                     "a rank was signalled" if a.stop else "all sources drained")
            self.stopping = True
        super()._periodic()   # rank 0's due checkpoints are only noted here (see _checkpoint)

    def _round(self, rows: int, step, boundary, idle: bool = False) -> Agreement:
        a = self.cluster.agree(rows, self.boundary.task, self.learner.encoder.frozen_blocks,
                               self.checkpoint_wanted is not None, self.stop_requested, idle)
        if a.task != self.learner.task and self.cluster.is_main and boundary is not None:
            self._end_task(boundary)
        self.cluster.apply(a, self.learner)
        self.metrics.current_task.set(self.learner.task)
        if a.rows:
            step() if step is not None else self.cluster.idle_step(self.learner)
            self.dirty = True   # every rank's weights moved, whoever had the rows
            if self.audit:
                self.audit.write(f"weights\t{self.learner.step_count}\t{weights_digest(self.learner)}\n")
        if a.checkpoint:
            self._checkpoint_together(self.checkpoint_wanted or "steps")
        return a

    # Durability and publishing ------------------------------------------------------------------
    def _checkpoint(self, reason: str) -> bool:
        """Called by the base loop on each rank; the ranks write together at rank 0's next round."""
        if self.cluster.is_main:
            self.checkpoint_wanted = reason
        return True

    def _checkpoint_together(self, reason: str) -> bool:
        self.source.refresh()
        self.checkpoint_wanted = None
        return super()._checkpoint(reason)

    def _snapshot(self, reason: str, probe: dict | None = None) -> None:
        if self.cluster.is_main:
            super()._snapshot(reason, probe)

    def _start_api(self) -> None:
        if self.cluster.is_main:
            super()._start_api()

    # Start and stop -------------------------------------------------------------------------------
    def _restore(self) -> None:
        super()._restore()
        main = load_checkpoint(self.cfg.checkpoint.dir) if self.cluster.is_main else None
        learner_state = {k: v for k, v in self.learner.state_dict().items() if k != "plugins"}
        shared = self.cluster.broadcast_object({"learner": learner_state,
                                                "positions": main["positions"] if main else None})
        own_plugins = self.learner.state_dict()["plugins"]
        self.learner.load_state_dict({**shared["learner"], "plugins": own_plugins})
        if shared["positions"] is not None:
            self.source.seek(shared["positions"])
        self.steps_at_checkpoint = self.steps_at_snapshot = self.learner.step_count
        self.cluster.attach(self.learner)
        if self.audit:
            self.audit.write(f"restored\t{self.learner.step_count}\t{weights_digest(self.learner)}\n")
        log.info("rank %d of %d: step %d, task %d", self.cluster.rank, self.cluster.world_size,
                 self.learner.step_count, self.learner.task)

    def _shutdown(self) -> None:
        self._checkpoint_together("shutdown")
        self.dirty = False
        super()._shutdown()
