import errno
import json
import os
import resource
import signal
import time
from datetime import datetime

import pytest
import safetensors.torch

from streamd import durable
from publishing_fixtures import tiny_learner
from streamd.learning.preprocess import MEAN, STD
from streamd.client import verify
from streamd.config import CheckpointConfig
from streamd.learning.learner import build_learner
from streamd.service.metrics import Metrics
from streamd.service.checkpoint import save_checkpoint
from streamd.service.snapshots import SnapshotPublisher, read_manifest, sha256_file


def publish(pub, learner, reason="steps", task=0):
    return pub.publish(learner, reason=reason, task=task, segment=task, positions={"kafka": {"0": [10, 20]}},
                       probe={"accuracy": {0: 0.5}})


@pytest.fixture(scope="module")
def learner():
    return tiny_learner()


def test_snapshot_folder_holds_encoder_config_and_manifest(tmp_path, learner):
    metrics = Metrics()
    pub = SnapshotPublisher(tmp_path, metrics=metrics)
    learner.encoder.freeze_prefix(2)
    try:
        first = publish(pub, learner)
        second = publish(pub, learner, reason="task_end", task=1)
    finally:
        learner.encoder.freeze_prefix(0)
    folder = tmp_path / "v000002"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "manifest.json", "model.safetensors"]
    manifest = read_manifest(folder)
    assert manifest == json.loads(json.dumps(second))
    assert (first["version"], first["parent"], manifest["version"], manifest["parent"]) == (1, None, 2, "v000001")
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset().total_seconds() == 0
    assert manifest["files"] == {n: sha256_file(folder / n) for n in ("model.safetensors", "config.json", "README.md")}
    assert manifest["frozen_blocks"] == {"count": 2, "names": ["stem", "layer1"]}
    assert (manifest["reason"], manifest["task"], manifest["positions"]) == ("task_end", 1, {"kafka": {"0": [10, 20]}})
    assert manifest["probe"] == {"accuracy": {"0": 0.5}}
    assert {"torch", "torchvision", "safetensors", "streamd", "python"} <= set(manifest["libraries"])
    config = json.loads((folder / "config.json").read_text())
    assert (config["arch"], config["image_size"], config["in_channels"]) == ("resnet_tiny", 16, 3)
    assert config["module"] == {"family": "resnet", "block": "BasicBlock", "layers": [1, 1, 1, 1], "width": 16,
                                      "stem": {"in_channels": 3, "kernel_size": 3, "stride": 1, "padding": 1,
                                               "maxpool": False}, "fc": "identity"}
    card = (folder / "README.md").read_text()
    assert "# streamd encoder v000002" in card and "parent: v000001" in card and "task 1 (segment 1)" in card
    assert config["preprocessing"]["mean"] == list(MEAN) and config["preprocessing"]["std"] == list(STD)
    weights = safetensors.torch.load_file(folder / "model.safetensors")  # encoder only, torchvision keys
    expected = learner.encoder.export_state_dict()
    assert weights.keys() == expected.keys() and "conv1.weight" in weights
    assert all(weights[k].equal(expected[k]) for k in weights)
    assert (tmp_path / "latest").read_text() == "v000002" and pub.latest_version() == 2
    assert metrics.registry.get_sample_value("streamd_snapshot_version") == 2
    assert metrics.registry.get_sample_value("streamd_snapshot_last_publish_timestamp_seconds") == pytest.approx(
        second["created_at_unix"])


def test_published_snapshots_are_readable_by_other_uids_and_checkpoints_stay_private(tmp_path, learner):
    """Consumers pull from the shared volume under their own uid; checkpoints hold raw replay images."""
    old = os.umask(0o022)
    try:
        publish(SnapshotPublisher(tmp_path / "snapshots"), learner)
        ckpt = save_checkpoint(tmp_path / "ckpt", 1, {"step": 1})
    finally:
        os.umask(old)
    folder = tmp_path / "snapshots" / "v000001"
    assert folder.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in folder.iterdir())
    assert ckpt.stat().st_mode & 0o777 == 0o700


def test_retention_keeps_last_n_and_every_task_end(tmp_path, learner):
    pub = SnapshotPublisher(tmp_path, keep_last=2)
    for reason in ["steps", "task_end", "steps", "interval", "task_end", "steps", "shutdown"]:
        publish(pub, learner, reason=reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aliases.log", "latest", "v000002", "v000005", "v000006", "v000007"]
    assert not list(tmp_path.glob(".tmp*"))


def test_failed_write_leaves_earlier_snapshots_intact_and_is_counted(tmp_path, learner, monkeypatch, caplog):
    metrics = Metrics()
    pub = SnapshotPublisher(tmp_path, metrics=metrics)
    publish(pub, learner)
    real_write = durable.write_synced

    def disk_full(path, write):
        if path.name == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, write)

    monkeypatch.setattr(durable, "write_synced", disk_full)
    assert publish(pub, learner) is None
    assert metrics.registry.get_sample_value("streamd_snapshot_failures_total") == 1
    assert "snapshot publish failed" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aliases.log", "latest", "v000001"]  # no partial folder left
    verify(tmp_path / "v000001", read_manifest(tmp_path / "v000001"))
    assert pub.latest_version() == 1 and metrics.registry.get_sample_value("streamd_snapshot_version") == 1

    monkeypatch.setattr(durable, "write_synced", real_write)
    assert publish(pub, learner)["version"] == 2


def test_latest_moves_last(tmp_path, learner, monkeypatch):
    """A failure after the folder rename but before the alias replace keeps ``latest`` on the old version."""
    pub = SnapshotPublisher(tmp_path)
    publish(pub, learner)

    def replace_fails(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", replace_fails)
    assert publish(pub, learner) is None
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text() == "v000001"
    assert publish(pub, learner)["version"] == 3  # numbers are never reused


def test_restarted_publisher_reports_existing_latest(tmp_path, learner):
    manifest = publish(SnapshotPublisher(tmp_path), learner)
    metrics = Metrics()
    SnapshotPublisher(tmp_path, metrics=metrics)
    assert metrics.registry.get_sample_value("streamd_snapshot_version") == 1
    assert metrics.registry.get_sample_value(
        "streamd_snapshot_last_publish_timestamp_seconds") == pytest.approx(manifest["created_at_unix"])


def test_resnet18_publish_takes_well_under_a_checkpoint_interval(tmp_path):
    """Publishing must not stall training; a ResNet-18 (32 px, 45 MB) takes ~0.3-0.6 s here."""
    learner = build_learner("resnet18", 32, objective_kwargs={"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 32},
                            device="cpu")
    pub = SnapshotPublisher(tmp_path)
    started = time.perf_counter()
    manifest = pub.publish(learner, reason="steps", task=0, segment=0, positions={})
    elapsed = time.perf_counter() - started
    assert manifest is not None and (tmp_path / "v000001" / "model.safetensors").stat().st_size > 40e6
    assert elapsed < CheckpointConfig().every_seconds / 10, elapsed


def test_kernel_write_failure_is_survived(tmp_path, learner):
    """A real failed write (the kernel refuses to grow a file past RLIMIT_FSIZE with EFBIG), not a mock."""
    metrics = Metrics()
    pub = SnapshotPublisher(tmp_path, metrics=metrics)
    publish(pub, learner)
    size = (tmp_path / "v000001" / "model.safetensors").stat().st_size
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, limits[1]))
    try:
        assert publish(pub, learner) is None
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert metrics.registry.get_sample_value("streamd_snapshot_failures_total") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aliases.log", "latest", "v000001"]
    verify(tmp_path / "v000001", read_manifest(tmp_path / "v000001"))
    assert publish(pub, learner)["version"] == 2


def test_task_end_retention_is_bounded_and_counted(tmp_path, learner):
    metrics = Metrics()
    pub = SnapshotPublisher(tmp_path, keep_last=2, keep_task_end=2, metrics=metrics)
    for _ in range(5):
        publish(pub, learner, reason="task_end")
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000004", "v000005"]
    assert metrics.registry.get_sample_value("streamd_snapshots_pruned_total") == 3
    for reason in ["steps", "steps", "task_end", "steps"]:
        publish(pub, learner, reason=reason)
    # last 2 (v8, v9) + the 2 newest task-end ones (v5, v8); v4 (older task end), v6, v7 pruned
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000005", "v000008", "v000009"]
    assert metrics.registry.get_sample_value("streamd_snapshots_pruned_total") == 6
    assert not list(tmp_path.glob(".tmp*"))


def test_retention_never_prunes_the_version_latest_names(tmp_path, learner):
    pub = SnapshotPublisher(tmp_path, keep_last=5)
    for _ in range(3):
        publish(pub, learner)
    (tmp_path / "latest").write_text("v000001")   # an operator pinned (rolled back to) an old version
    SnapshotPublisher(tmp_path, keep_last=1)._prune()   # e.g. a restart with a lower keep_last
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000001", "v000003"]


def test_keep_task_end_zero_keeps_every_task_end_snapshot(tmp_path, learner):
    pub = SnapshotPublisher(tmp_path, keep_last=1, keep_task_end=0)
    for reason in ["task_end"] * 4 + ["steps"] * 2:
        publish(pub, learner, reason=reason)
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000001", "v000002", "v000003", "v000004", "v000006"]
