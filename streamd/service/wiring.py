"""From configuration to parts: the one place that knows which class each config section builds.

The daemon (and each torchrun rank) asks for its learner, source, dead-letter sink, prober and
snapshot publisher here, so the loop never imports a connector and a new source kind is one
branch in ``build_source``. Connectors are imported lazily: a directory-only daemon never loads
kafka-python.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile

from streamd.connectors.base import DeadLetterSink, Record, Source
from streamd.config import ConfigError, StreamdConfig
from streamd.errors import LocalIOError, os_error_text
from streamd.service.distributed import Cluster
from streamd.learning.learner import Learner, build_learner
from streamd.service.metrics import Metrics
from streamd.service.probe import Prober
from streamd.service.publish_gate import PublishGate
from streamd.service.snapshots import SnapshotPublisher


log = logging.getLogger("streamd.daemon")
FULL = (errno.ENOSPC, errno.EDQUOT)   # a full disk is survived at run time (writes retry), so not fatal here


def ensure_writable(cfg: StreamdConfig) -> None:
    """Creates the folders the daemon writes and stops the start, in one line, where it cannot write.

    A read-only root filesystem or a volume owned by another uid would otherwise surface as a
    traceback from whichever part writes first, or as a probe history that silently never lands."""
    for setting, path in cfg.written_paths().items():
        folder = path.parent if setting == "audit_log" else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            if e.errno in FULL:
                log.warning("%s %s: %s; starting anyway, writes there will be retried", setting, path, os_error_text(e))
                continue
            raise LocalIOError(f"{setting} {path} cannot be written by uid {os.getuid()}: {os_error_text(e)}; "
                               "mount a volume writable by this uid there, or set state_dir (STREAMD_STATE_DIR) "
                               "to one") from e


def rank_config(cfg: StreamdConfig, cluster: Cluster) -> StreamdConfig:
    """One of several ranks writes its own checkpoints (CHECKPOINT_DIR/rank-NNN/) and audit log
    (NAME.rankN.log); only Kafka's consumer group can split a stream between ranks."""
    if not cluster.enabled:
        return cfg
    if cfg.source.kind != "kafka":
        raise ConfigError(f"source.kind {cfg.source.kind!r} cannot be shared by {cluster.world_size} ranks: "
                          "only a Kafka consumer group splits a stream between ranks")
    own = {"checkpoint": cfg.checkpoint.model_copy(update={"dir": cfg.checkpoint.dir / f"rank-{cluster.rank:03d}"})}
    if cfg.audit_log:
        own["audit_log"] = cfg.audit_log.with_name(f"{cfg.audit_log.stem}.rank{cluster.rank}{cfg.audit_log.suffix}")
    return cfg.model_copy(update=own)


def build_learner_from(cfg: StreamdConfig) -> Learner:
    m, lc = cfg.model, cfg.learner
    return build_learner(m.arch, m.image_size, m.objective, cfg.strategy.name, objective_kwargs=m.objective_kwargs,
                         plugin_options=cfg.strategy.plugin_options, augment_kwargs=m.augment_kwargs,
                         optim=cfg.optim, device=lc.device, amp=lc.amp, compile=lc.compile)


def build_prober(cfg: StreamdConfig, metrics: Metrics) -> Prober:
    p = cfg.probe
    return Prober(per_task=p.per_task, every_steps=p.every_steps, history_path=p.history_dir, metrics=metrics,
                  max_pending_rows=p.max_pending_rows)


def build_publisher(cfg: StreamdConfig, metrics: Metrics) -> SnapshotPublisher:
    s = cfg.snapshots
    training = {"objective": cfg.model.objective, "strategy": cfg.strategy.name, "source": cfg.source.kind}
    gate = PublishGate(**s.gate.model_dump(exclude={"enabled"})) if s.gate.enabled else None
    return SnapshotPublisher(s.dir, keep_last=s.keep_last, keep_task_end=s.keep_task_end, metrics=metrics,
                             training=training, gate=gate)


def build_source(cfg: StreamdConfig, metrics: Metrics | None = None) -> Source:
    s = cfg.source
    if s.kind == "directory":
        from streamd.connectors.directory import DirectorySource
        s.directory.path.mkdir(parents=True, exist_ok=True)
        d = s.directory
        return DirectorySource(d.path, d.task_from_subfolder, d.settle_seconds, d.on_commit, d.done_dir)
    if s.kind == "kafka":
        from streamd.connectors.kafka import KafkaSource
        k = s.kafka
        return KafkaSource(k.bootstrap_servers, k.topic, k.group_id, k.max_poll_records,
                           client_options=k.consumer_options(), on_offsets_beyond_log_end=k.on_offsets_beyond_log_end,
                           on_offsets_invalid=metrics.source_offsets_invalid.inc if metrics else None)
    from streamd.connectors.parquet import ParquetSource
    p = s.parquet
    return ParquetSource(p.path, p.image_column, p.label_column, p.task_column, p.batch_rows)


class _DropDeadLetter:
    """dead_letter.kind = "none": the reason is logged and counted, the payload dropped."""

    def send(self, record: Record, reason: str) -> None: ...

    def close(self) -> None: ...


def build_dead_letter(cfg: StreamdConfig) -> DeadLetterSink:
    d = cfg.dead_letter
    if d.kind == "folder":
        from streamd.connectors.directory import FolderDeadLetter
        return FolderDeadLetter(d.path)
    if d.kind == "kafka":
        from streamd.connectors.kafka import KafkaDeadLetter
        k = cfg.source.kafka
        return KafkaDeadLetter(k.bootstrap_servers, d.topic, client_options=k.security_options())
    return _DropDeadLetter()
