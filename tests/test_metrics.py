import re
import subprocess

import httpx
from prometheus_client import generate_latest

from publishing_fixtures import images, tiny_learner
from streamd.service.api import ApiServer
from streamd.service.ingest import DEAD_LETTER_REASONS
from streamd.service.metrics import Metrics


def test_promtool_check_metrics_passes_on_the_served_exposition(tmp_path):
    metrics = Metrics()
    metrics.records_dead_lettered.labels("corrupt").inc()
    metrics.step_duration.observe(0.12)
    metrics.probe_accuracy.labels("0").set(0.9)
    api = ApiServer("127.0.0.1", 0, tmp_path, metrics, ready=lambda: True)
    api.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{api.port}/metrics")
    finally:
        api.stop()
    assert response.headers["content-type"].startswith("text/plain; version=")
    check = subprocess.run(["promtool", "check", "metrics"], input=response.content, capture_output=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_names_follow_prometheus_conventions():
    text = generate_latest(Metrics().registry).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert all(name.startswith("streamd_") for name in types)
    for name, kind in types.items():
        assert name.endswith("_total") == (kind == "counter"), name
        if "timestamp" in name or "duration" in name:
            assert name.endswith("_seconds"), name
    assert {"streamd_probe_accuracy_ratio", "streamd_backward_flops_saved_ratio"} <= set(types)
    assert 'streamd_build_info{' in text and 'torch="' in text


def test_every_dead_letter_reason_series_exists_before_its_first_increment():
    """A series created on first use misses that increment in rate()/increase(); all reasons start at 0."""
    text = generate_latest(Metrics().registry).decode()
    series = dict(re.findall(r'^streamd_records_dead_lettered_total\{reason="(\w+)"\} (\S+)$', text, re.M))
    assert set(series) == set(DEAD_LETTER_REASONS) and set(series.values()) == {"0.0"}


def test_each_instance_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.training_steps.inc(3)
    assert a.registry.get_sample_value("streamd_training_steps_total") == 3
    assert b.registry.get_sample_value("streamd_training_steps_total") == 0


def test_observe_plugins_copies_plugin_values():
    learner = tiny_learner(strategy="replay")
    learner.step(images(4))
    learner.encoder.freeze_prefix(1)
    metrics = Metrics()
    metrics.observe_plugins(learner)
    assert metrics.registry.get_sample_value("streamd_replay_buffer_size") == 4
    assert metrics.registry.get_sample_value("streamd_frozen_blocks") == 1
