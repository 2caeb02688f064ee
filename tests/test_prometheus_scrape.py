"""A real Prometheus server scrapes streamd: first an in-process ApiServer, then the daemon running as
its own process, which also publishes snapshots that ``streamd pull`` and ``load_encoder`` fetch."""
import signal
import subprocess

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from daemon_fixtures import consumed_count, produce_dir, start_daemon, write_config
from prometheus_fixtures import query, running_prometheus, wait_until
from publishing_fixtures import images
from streamd.service.api import ApiServer
from streamd.service.checkpoint import latest_checkpoint, load_checkpoint
from streamd.cli import main as streamd_main
from streamd.client import load_encoder
from streamd.config import load_config
from streamd.service.wiring import build_learner_from
from streamd.service.metrics import Metrics


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


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_daemon_process_publishes_snapshots_that_pull_and_load_encoder_reproduce(tmp_path):
    produce_dir(tmp_path / "inbox", tasks=2, per_task=24)
    config, port = write_config(tmp_path), free_port()
    # every step: a snapshot and a checkpoint, so that the newest of both end at the same step
    overrides = {"STREAMD_API__PORT": str(port), "STREAMD_SNAPSHOTS__EVERY_STEPS": "1",
                 "STREAMD_SNAPSHOTS__KEEP_LAST": "3", "STREAMD_CHECKPOINT__EVERY_STEPS": "1"}
    daemon = start_daemon(config, env=overrides)
    url, checkpoints = f"http://127.0.0.1:{port}", tmp_path / "ckpt"
    try:
        with running_prometheus([f"127.0.0.1:{port}"], tmp_path / "prom") as prom:
            def settled():
                """All 48 images trained (acked in the audit log), the newest snapshot and the newest
                checkpoint at the final step."""
                if daemon.proc.poll() is not None:
                    raise AssertionError(f"daemon exited early:\n{daemon.log()[-3000:]}")
                ckpt = latest_checkpoint(checkpoints)
                if consumed_count(tmp_path / "audit.log") != 48 or ckpt is None:
                    return None
                m = scrape(url)
                latest = httpx.get(f"{url}/v1/snapshots/latest", timeout=5).json()
                step = int(m["streamd_training_steps_total"])
                return latest if latest["step"] == step == int(ckpt.name.split("-")[1]) else None

            latest = wait_until(settled, 240, "the daemon to train on everything")
            listing = httpx.get(f"{url}/v1/snapshots", timeout=5).json()["snapshots"]
            assert len(listing) >= 3 and listing[-1]["name"] == latest["name"]
            assert "task_end" in {s["reason"] for s in listing}  # two tasks: the first one's end is kept

            pulled = tmp_path / "pulled"
            assert streamd_main(["pull", url, "--version", "latest", "--out", str(pulled)]) == 0
            reference = build_learner_from(load_config(config))
            reference.load_state_dict(load_checkpoint(checkpoints)["learner"])
            reference.encoder.eval()
            x = reference.preprocess(images(8, size=16))
            with torch.no_grad():
                expected = reference.encoder(x)
                assert torch.equal(load_encoder(pulled)(x), expected)
                assert torch.equal(load_encoder(url, version=latest["name"])(x), expected)

            # The newest stored sample may predate the end of training (a scrape taken mid-run, the
            # next ones not yet in): wait for a scrape that saw all 48, as for the snapshot version.
            consumed = wait_until(lambda: [r for r in query(prom, "streamd_records_consumed_total")
                                           if float(r["value"][1]) == 48], 30, "a scrape with all 48 records")
            assert consumed[0]["metric"]["job"] == "streamd"
            wait_until(lambda: [r for r in query(prom, "streamd_snapshot_version")
                                if float(r["value"][1]) == latest["version"]], 15, "the snapshot version series")
            check = subprocess.run(["promtool", "check", "metrics"], input=httpx.get(f"{url}/metrics").content,
                                   capture_output=True, timeout=30)
            assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    finally:
        daemon.kill(signal.SIGTERM)
    assert daemon.wait(timeout=60)["latest_snapshot"] >= latest["version"]  # exits 0 after its shutdown work
