"""A `latest` downstream teams can trust: the publish gate keeps a collapsed (or clearly worse) encoder
from becoming `latest`, and operators move named aliases (promote, roll back) through the API and the
CLI, audited, with retention never pruning what an alias names."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import torch
from publishing_fixtures import images, tiny_learner

from streamd.learning.learner import build_learner
from streamd.learning.optim import OptimConfig
from streamd.service.alias_log import history
from streamd.service.api import ApiServer
from streamd.service.metrics import Metrics
from streamd.service.probe import Prober
from streamd.service.publish_gate import PublishGate
from streamd.service.snapshots import SnapshotPublisher, read_manifest, resolve_version

TOKEN = "gate-token"


def measured(learner) -> dict:
    """A real probe measurement (unlabelled: health and drift only) of the learner as it is now."""
    prober = Prober(per_task=32, hold_out_every=1)
    prober.hold_out(images(32, seed=5), None, task=0)
    return prober.maybe_measure(learner, step=learner.step_count, force=True)


def train(learner, steps: int = 10) -> None:
    x = images(64, seed=2)
    for _ in range(steps):
        learner.step(x)


def test_judge_checks_what_it_has_evidence_for():
    gate = PublishGate(min_std_ratio=0.05, min_effective_rank=1.5, max_accuracy_drop=0.05, max_drift=0.8)
    healthy = {"health": {"std_ratio": 0.4, "effective_rank": 30.0}, "accuracy": {"0": 0.90, "1": 0.80},
               "drift": {"0": 0.2}}
    assert gate.judge(healthy, None) == {"passed": True, "failures": [],
                                         "checked": ["std_ratio", "effective_rank", "drift"]}
    assert gate.judge(None, None) == {"passed": True, "failures": [], "checked": []}   # no probe rows yet
    worse = {**healthy, "accuracy": {"0": 0.80, "1": 0.70, "2": 0.1}}
    verdict = gate.judge(worse, {"accuracy": {"0": 0.90, "1": 0.80}})
    assert not verdict["passed"] and verdict["failures"] == [
        "probe accuracy 0.100 below latest's on tasks 0, 1 (allowed 0.05)"]   # task 2 has no earlier figure
    assert gate.judge({**healthy, "accuracy": {"0": 0.87}}, {"accuracy": {0: 0.90}})["passed"]   # within the margin
    line = {"health": {"std_ratio": 0.5, "effective_rank": 1.2}}
    assert gate.judge(line, None)["failures"] == ["dimensional collapse: effective rank 1.20 < 1.5"]
    assert gate.judge({"drift": {"0": 0.95}}, None)["failures"] == ["drift 0.950 > 0.8"]


def test_a_collapsed_encoder_is_published_as_a_candidate_and_never_becomes_latest(tmp_path):
    metrics = Metrics()
    pub = SnapshotPublisher(tmp_path, metrics=metrics, gate=PublishGate())
    torch.manual_seed(0)
    learner = build_learner("resnet_tiny", 16, device="cpu", optim=OptimConfig(lr=50.0))   # a destructive rate
    good = pub.publish(learner, reason="steps", task=0, segment=0, positions={}, probe=measured(learner))
    assert good["gate"]["passed"] and resolve_version(tmp_path, "latest") == "v000001"   # before any step

    train(learner)   # measured: the feature spread falls from ~0.25 to ~0.02
    probe = measured(learner)
    assert probe["health"]["std_ratio"] < 0.05, probe["health"]   # the collapse is real, not staged
    bad = pub.publish(learner, reason="steps", task=0, segment=0, positions={}, probe=probe)
    assert not bad["gate"]["passed"] and bad["gate"]["failures"][0].startswith("collapse: feature spread 0.0")
    assert resolve_version(tmp_path, "latest") == "v000001"                     # latest did not move
    assert read_manifest(tmp_path / "v000002")["gate"] == bad["gate"]           # the verdict is in the manifest
    assert metrics.registry.get_sample_value("streamd_snapshot_gate_rejections_total") == 1
    assert metrics.registry.get_sample_value("streamd_snapshot_version") == 1   # what latest names
    assert [(e["alias"], e["to"], e["actor"]) for e in history(tmp_path)] == [("latest", "v000001", "daemon")]


def test_without_a_gate_every_snapshot_becomes_latest(tmp_path):
    pub = SnapshotPublisher(tmp_path)
    learner = tiny_learner()
    pub.publish(learner, reason="steps", task=0, segment=0, positions={},
                probe={"health": {"std_ratio": 0.0, "effective_rank": 1.0}})
    assert resolve_version(tmp_path, "latest") == "v000001"


@pytest.fixture
def served(tmp_path):
    """Three published versions and an API with a token over them."""
    root = tmp_path / "snapshots"
    pub = SnapshotPublisher(root, keep_last=1)
    learner = tiny_learner()
    for _ in range(3):
        pub.publish(learner, reason="steps", task=0, segment=0, positions={})
    api = ApiServer("127.0.0.1", 0, root, Metrics(), ready=lambda: True, token=TOKEN)
    api.start()
    yield f"http://127.0.0.1:{api.port}", root, pub, learner
    api.stop()


def test_aliases_promote_and_roll_back_through_the_api_with_the_token_and_an_audit_trail(served):
    url, root, pub, learner = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/v1/aliases/stable", json={"version": "v000003"}).status_code == 401
    moved = httpx.post(f"{url}/v1/aliases/stable", json={"version": "v000003"}, headers=auth)
    assert moved.status_code == 200 and moved.json()["to"] == "v000003" and moved.json()["from"] is None
    assert httpx.get(f"{url}/v1/snapshots/stable", headers=auth).json()["name"] == "v000003"
    pub.publish(learner, reason="steps", task=0, segment=0, positions={})       # v4: latest moves, stable stays
    assert httpx.get(f"{url}/v1/aliases", headers=auth).json()["aliases"] == {"latest": "v000004", "stable": "v000003"}
    assert httpx.post(f"{url}/v1/aliases/stable", json={"version": "latest"}, headers=auth).json()["to"] == "v000004"
    back = httpx.post(f"{url}/v1/aliases/stable/rollback", headers=auth)
    assert back.status_code == 200 and (back.json()["from"], back.json()["to"]) == ("v000004", "v000003")
    assert sorted(p.name for p in root.glob("v*")) == ["v000003", "v000004"]     # keep_last=1, but stable holds v3
    missing = httpx.post(f"{url}/v1/aliases/stable", json={"version": "v000001"}, headers=auth)
    assert missing.status_code == 404 and "no snapshot v000001" in missing.json()["detail"]
    assert httpx.post(f"{url}/v1/aliases/V1", json={"version": "v000003"}, headers=auth).status_code == 422
    trail = [(e["alias"], e["action"], e["to"]) for e in history(root) if e["alias"] == "stable"]
    assert trail == [("stable", "promote", "v000003"), ("stable", "promote", "v000004"), ("stable", "rollback", "v000003")]
    assert all(e["actor"] == "api:127.0.0.1" for e in history(root) if e["alias"] == "stable")


def test_an_api_without_a_token_serves_aliases_read_only(tmp_path):
    root = tmp_path / "snapshots"
    SnapshotPublisher(root).publish(tiny_learner(), reason="steps", task=0, segment=0, positions={})
    api = ApiServer("127.0.0.1", 0, root, Metrics(), ready=lambda: True, token=None)
    api.start()
    try:
        url = f"http://127.0.0.1:{api.port}"
        assert httpx.get(f"{url}/v1/aliases").json() == {"aliases": {"latest": "v000001"}}
        refused = httpx.post(f"{url}/v1/aliases/stable", json={"version": "v000001"})
        assert refused.status_code == 403 and "api.token" in refused.json()["detail"]
    finally:
        api.stop()


def streamd(*args, token=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamd", "alias", *args] + (["--token", token] if token else []),
                          capture_output=True, text=True, timeout=120)


def test_alias_command_on_a_daemon_url_and_on_the_snapshot_folder(served):
    url, root, pub, learner = served
    promoted = streamd("promote", url, "stable", "v000003", token=TOKEN)
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["to"] == "v000003"
    pub.publish(learner, reason="steps", task=0, segment=0, positions={})       # v4
    refused = streamd("promote", url, "stable", "v000004", token="wrong")
    assert refused.returncode == 5 and refused.stderr.startswith("streamd: ") and "Traceback" not in refused.stderr
    assert streamd("promote", str(root), "stable", "v000004").returncode == 0   # on the volume itself
    local = streamd("rollback", str(root), "stable")
    assert local.returncode == 0, local.stderr
    assert json.loads(streamd("list", str(root)).stdout)["aliases"] == {"latest": "v000004", "stable": "v000003"}
    assert [e["actor"].split(":")[0] for e in history(root) if e["alias"] == "stable"] == ["api", "cli", "cli"]
    nothing = streamd("rollback", str(root), "prod")
    assert nothing.returncode == 3 and "alias 'prod' has no earlier version" in nothing.stderr
