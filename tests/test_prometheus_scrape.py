"""A real Prometheus server scrapes streamd: first an in-process ApiServer, then the daemon running as
its own process, which also publishes snapshots that ``streamd pull`` and ``load_encoder`` fetch."""
import os
import signal
import subprocess
import sys

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from prometheus_fixtures import query, running_prometheus, wait_until
from publishing_fixtures import TINY_OBJECTIVE, images
from streamd.api import ApiServer
from streamd.checkpoint import latest_checkpoint, load_checkpoint
from streamd.cli import main as streamd_main
from streamd.client import load_encoder
from streamd.config import load_config
from streamd.daemon import build_learner_from
from streamd.metrics import Metrics


def test_prometheus_scrapes_the_api_and_serves_streamd_series(tmp_path):
    metrics = Metrics()
    metrics.training_steps.inc(7)
    metrics.records_dead_lettered.labels("corrupt").inc(3)
    metrics.probe_accuracy.labels("2").set(0.75)
    api = ApiServer("127.0.0.1", 0, tmp_path / "snapshots", metrics, ready=lambda: True, token="t0ken")
    api.start()
    try:
        with running_prometheus([f"127.0.0.1:{api.port}"], tmp_path / "prom") as prom:
            steps = wait_until(lambda: query(prom, "streamd_training_steps_total"), 30, "the first scrape")
            assert float(steps[0]["value"][1]) == 7 and steps[0]["metric"]["job"] == "streamd"
            metrics.training_steps.inc(5)  # a later scrape sees the change
            wait_until(lambda: float(query(prom, "streamd_training_steps_total")[0]["value"][1]) == 12, 15, "rescrape")
            dead = query(prom, 'streamd_records_dead_lettered_total{reason="corrupt"}')
            assert float(dead[0]["value"][1]) == 3
            assert float(query(prom, 'streamd_probe_accuracy_ratio{task="2"}')[0]["value"][1]) == 0.75
            assert query(prom, "streamd_build_info")[0]["metric"]["version"]
            assert float(query(prom, 'up{job="streamd"}')[0]["value"][1]) == 1
    finally:
        api.stop()


DAEMON_TOML = """
[source]
kind = "directory"
[source.directory]
path = "{inbox}"
settle_seconds = 0.0
[dead_letter]
kind = "none"
[model]
arch = "resnet_tiny"
image_size = 16
objective = "simsiam"
objective_kwargs = {objective}
[strategy]
name = "finetune"
[learner]
device = "cpu"
batch_size = 8
max_wait_seconds = 0.5
[boundary]
mode = "header"
[checkpoint]
dir = "{var}/checkpoints"
every_steps = 0
every_seconds = 0.5
[snapshots]
dir = "{var}/snapshots"
every_steps = 1
every_seconds = 0
keep_last = 3
[probe]
per_task = 6
every_steps = 2
history_dir = "{var}/history"
[api]
host = "127.0.0.1"
port = {port}
[logging]
progress_seconds = 1.0
"""


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_daemon_process_publishes_snapshots_that_pull_and_load_encoder_reproduce(tmp_path):
    inbox, var, port = tmp_path / "inbox", tmp_path / "var", free_port()
    assert streamd_main(["produce", "dir", "--dataset", "digits", "--tasks", "2", "--per-task", "24", "--headers",
                         "--image-size", "16", "--out", str(inbox)]) == 0
    objective = "{" + ", ".join(f"{k} = {v}" for k, v in TINY_OBJECTIVE.items()) + "}"
    config = tmp_path / "streamd.toml"
    config.write_text(DAEMON_TOML.format(inbox=inbox, var=var, port=port, objective=objective))
    log = (tmp_path / "daemon.log").open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    daemon = subprocess.Popen([sys.executable, "-m", "streamd", "run", "--config", str(config)], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with running_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom") as prom:
            def settled():
                """All 48 images trained, the newest snapshot and the newest checkpoint at the same step."""
                if daemon.poll() is not None:
                    raise AssertionError("daemon exited early: " + (tmp_path / "daemon.log").read_text()[-3000:])
                m = scrape(url)
                ckpt = latest_checkpoint(var / "checkpoints")
                if m.get("streamd_records_consumed_total") != 48 or ckpt is None:
                    return None
                latest = httpx.get(f"{url}/v1/snapshots/latest", timeout=5).json()
                step = int(m["streamd_training_steps_total"])
                return latest if latest["step"] == step == int(ckpt.name.split("-")[1]) else None

            latest = wait_until(settled, 240, f"the daemon to train everything (log: {tmp_path / 'daemon.log'})")
            listing = httpx.get(f"{url}/v1/snapshots", timeout=5).json()["snapshots"]
            assert len(listing) >= 3 and listing[-1]["name"] == latest["name"]
            assert "task_end" in {s["reason"] for s in listing}  # two tasks: the first one's end is kept

            pulled = tmp_path / "pulled"
            assert streamd_main(["pull", url, "--version", "latest", "--out", str(pulled)]) == 0
            reference = build_learner_from(load_config(config))
            reference.load_state_dict(load_checkpoint(var / "checkpoints")["learner"])
            reference.encoder.eval()
            x = reference.preprocess(images(8, size=16))
            with torch.no_grad():
                expected = reference.encoder(x)
                assert torch.equal(load_encoder(pulled)(x), expected)
                assert torch.equal(load_encoder(url, version=latest["name"])(x), expected)

            consumed = wait_until(lambda: query(prom, "streamd_records_consumed_total"), 30, "a scrape of the daemon")
            assert float(consumed[0]["value"][1]) == 48 and consumed[0]["metric"]["job"] == "streamd"
            wait_until(lambda: [r for r in query(prom, "streamd_snapshot_version")
                                if float(r["value"][1]) == latest["version"]], 15, "the snapshot version series")
            check = subprocess.run(["promtool", "check", "metrics"], input=httpx.get(f"{url}/metrics").content,
                                   capture_output=True, timeout=30)
            assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    finally:
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(timeout=60)
        log.close()
    assert exit_code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
