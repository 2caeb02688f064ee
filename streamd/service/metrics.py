"""The daemon's Prometheus metrics, one object per process (tests make many: each owns a registry).

Names follow Prometheus conventions: ``streamd_`` prefix, base units (``_seconds``), ``_total`` on
counters (added by prometheus-client), ``_ratio`` for values in 0..1, and only bounded labels
(dead-letter reason words, boundary kind, task ids of the probe sets, which the prober bounds).
"""
from __future__ import annotations

import sys

import torch
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

import streamd
from streamd.service.ingest import DEAD_LETTER_REASONS

# The text format would add a ``*_created`` gauge per counter and histogram: noise for dashboards and
# alerts (Prometheus detects counter resets itself).
prometheus_client.disable_created_metrics()

# Gauges a plugin may feed through ``Plugin.metrics()`` (same key as the attribute name).
PLUGIN_GAUGES = ("replay_buffer_size", "frozen_blocks", "backward_flops_saved_ratio")
# The ``*_timestamp_seconds`` gauges, by attribute: checkpoints carry their values, so that after a
# restart the stall/stale alerts compare against the real last event instead of 0 (which mutes them).
TIMESTAMP_GAUGES = {"last_record_timestamp": "streamd_last_record_timestamp_seconds",
                    "checkpoint_last_timestamp": "streamd_checkpoint_last_timestamp_seconds",
                    "snapshot_last_publish_timestamp": "streamd_snapshot_last_publish_timestamp_seconds"}
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()

        def counter(name, doc, labels=()):
            return Counter(f"streamd_{name}", doc, labels, registry=self.registry)

        def gauge(name, doc, labels=()):
            return Gauge(f"streamd_{name}", doc, labels, registry=self.registry)

        # Ingest
        self.records_consumed = counter("records_consumed", "Records read from the source.")
        self.records_decoded = counter("records_decoded", "Records decoded into images.")
        self.records_dead_lettered = counter("records_dead_lettered", "Records sent to the dead-letter sink.",
                                             ["reason"])
        for reason in DEAD_LETTER_REASONS:  # every series exists from the first scrape: no increment is missed
            self.records_dead_lettered.labels(reason)
        self.dead_letter_failures = counter("dead_letter_failures",
                                            "Dead-letter sink writes that failed (the record stays un-acked).")
        self.dead_letter_backlog = gauge("dead_letter_backlog_records",
                                         "Dead letters waiting for the sink to recover (not acked).")
        self.last_record_timestamp = gauge("last_record_timestamp_seconds",
                                           "Unix time the last record was consumed (ingest-stalled alert).")
        self.consumer_lag = gauge("consumer_lag_records", "Records behind the source head, summed over partitions.")
        self.source_offsets_invalid = counter(
            "source_offsets_invalid", "Source partitions whose checkpoint/committed offset lay past the log end "
            "or belonged to a deleted and recreated topic (another topic id).")
        self.images_per_second = gauge("images_per_second", "Training throughput over the last interval.")
        # Training
        self.training_steps = counter("training_steps", "Optimizer steps taken.")
        self.step_duration = Histogram("streamd_step_duration_seconds", "Wall time of one training step.",
                                       buckets=STEP_SECONDS_BUCKETS, registry=self.registry)
        self.loss = gauge("loss", "Total loss of the last training step.")
        self.nonfinite_steps = counter("nonfinite_steps", "Steps skipped because the loss was not finite.")
        # Tasks and drift
        self.current_task = gauge("current_task", "Id of the task being learned.")
        self.task_boundaries = counter("task_boundaries", "Task boundaries detected.", ["kind"])
        for kind in ("header", "drift"):  # series exist from the start, so rate() sees the first one
            self.task_boundaries.labels(kind)
        self.drift_statistic = gauge("drift_statistic", "Current value of the drift detector's statistic.")
        # Continual-learning plugins
        self.replay_buffer_size = gauge("replay_buffer_size", "Images held in the replay buffer.")
        self.frozen_blocks = gauge("frozen_blocks", "Encoder blocks frozen (counted from the input).")
        self.backward_flops_saved_ratio = gauge("backward_flops_saved_ratio",
                                                "Fraction of backward FLOPs saved by frozen blocks.")
        self.plugin_value = gauge("plugin_value", "Any other value a plugin reports (name fixed by its code).",
                                  ["plugin", "name"])
        # Durability and publishing
        self.snapshot_version = gauge("snapshot_version", "Version number of the latest published snapshot.")
        self.snapshot_last_publish_timestamp = gauge("snapshot_last_publish_timestamp_seconds",
                                                     "Unix time of the latest snapshot publish.")
        self.snapshot_failures = counter("snapshot_failures", "Snapshot publishes that failed.")
        self.snapshots_pruned = counter("snapshots_pruned", "Snapshot versions removed by retention.")
        self.checkpoint_last_timestamp = gauge("checkpoint_last_timestamp_seconds",
                                               "Unix time of the last durable checkpoint.")
        self.checkpoint_failures = counter("checkpoint_failures", "Checkpoint writes that failed.")
        self.snapshot_gate_rejections = counter(
            "snapshot_gate_rejections", "Snapshots the publish gate kept from becoming latest (published as "
            "candidates: collapse, accuracy drop or drift; the manifest says which).")
        self.source_commit_failures = counter(
            "source_commit_failures", "Source commits (Kafka offsets) that failed after their retries; the "
            "checkpoint still holds the positions, but another group member would re-read those records.")
        # Probes
        self.probe_accuracy = gauge("probe_accuracy_ratio", "kNN accuracy on a task's held-out probe set.", ["task"])
        self.probe_forgetting = gauge("probe_forgetting_ratio", "Best earlier probe accuracy minus the current one.",
                                      ["task"])
        self.forgetting_mean = gauge("forgetting_mean_ratio", "Probe forgetting averaged over earlier tasks.")
        self.representation_drift = gauge("representation_drift_ratio",
                                          "1 - linear CKA between current and task-end features of a task's probe set.",
                                          ["task"])
        self.representation_std_ratio = gauge(
            "representation_std_ratio", "Std of L2-normalised probe features x sqrt(dim): ~0.1-0.5 for a "
            "healthy ResNet, towards 0 when the representation collapses (needs no labels).")
        self.representation_effective_rank = gauge(
            "representation_effective_rank", "exp(entropy of the normalised singular values) of the probe features.")
        self.probe_history_rows_dropped = counter(
            "probe_history_rows_dropped", "Probe-history rows dropped (oldest first) while the history folder "
            "could not be written and the in-memory backlog was full.")
        self.build_info = Info("streamd_build", "Versions of streamd and its runtime.", registry=self.registry)
        self.build_info.info({"version": streamd.__version__, "torch": torch.__version__,
                              "python": sys.version.split()[0]})

    def observe_plugins(self, learner) -> None:
        """Copies each plugin's ``metrics()`` into the gauge of the same name, or else into
        ``streamd_plugin_value{plugin, name}``."""
        self.frozen_blocks.set(learner.encoder.frozen_blocks)
        for plugin in learner.plugins:
            for name, value in plugin.metrics().items():
                target = getattr(self, name) if name in PLUGIN_GAUGES else self.plugin_value.labels(plugin.name, name)
                target.set(value)

    def timestamps(self) -> dict[str, float]:
        """The current values of the TIMESTAMP_GAUGES (what a checkpoint stores)."""
        return {name: self.registry.get_sample_value(sample) for name, sample in TIMESTAMP_GAUGES.items()}

    def restore_timestamps(self, saved: dict[str, float]) -> None:
        """Sets each known gauge to its saved value unless it already holds a newer one."""
        current = self.timestamps()
        for name, value in saved.items():
            if name in TIMESTAMP_GAUGES and value > current[name]:
                getattr(self, name).set(value)

    def forget_task_labels(self, task: int) -> None:
        """Drops the per-task series of a task the prober no longer tracks (keeps labels bounded)."""
        for family in (self.probe_accuracy, self.probe_forgetting, self.representation_drift):
            try:
                family.remove(str(task))
            except KeyError:
                pass
