"""The service around the learner: the daemon loop, ingest and batching, boundaries, probes,
checkpoints and snapshots, dead letters, ranks, the HTTP API and metrics."""
