"""A restarted daemon process: what it resumes from, when it refuses to start, ``--reset``, and the
timestamps it exposes before it reads anything new."""
from __future__ import annotations

import signal
import subprocess
import sys

import httpx
from conftest import free_port
from daemon_fixtures import consumed_count, produce_dir, start_daemon, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from streamd.service.checkpoint import LATEST, checkpoint_folders, load_checkpoint
from streamd.service.metrics import TIMESTAMP_GAUGES
from streamd.service.snapshots import read_manifest

RECORDS = 48


def trained_stream(tmp_path):
    """A config and a first daemon run over a whole two-task stream, stopped once drained."""
    produce_dir(tmp_path / "inbox", 2, RECORDS // 2)
    config = write_config(tmp_path)
    summary = start_daemon(config, exit_when_idle=1.0).wait(timeout=180)
    assert summary["records_seen"] == RECORDS and summary["resumed_from"] is None
    return config


def timestamps(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return {name: samples[sample] for name, sample in TIMESTAMP_GAUGES.items()}


def test_restarted_daemon_exposes_the_last_timestamps_before_reading_anything(tmp_path):
    config = trained_stream(tmp_path)
    saved = load_checkpoint(tmp_path / "ckpt")["timestamps"]
    assert all(value > 0 for value in saved.values()), saved
    consumed = consumed_count(tmp_path / "audit.log")

    port = free_port()
    daemon = start_daemon(config, env={"STREAMD_API__PORT": str(port)})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 120, "the restarted daemon to be ready", daemon)
    exposed = timestamps(url)
    daemon.kill(signal.SIGTERM)
    summary = daemon.wait(timeout=60)
    assert summary["resumed_from"] and summary["records_seen"] == RECORDS
    assert consumed_count(tmp_path / "audit.log") == consumed, "the restarted daemon read no record"
    assert exposed["last_record_timestamp"] == saved["last_record_timestamp"]
    assert exposed["checkpoint_last_timestamp"] == saved["checkpoint_last_timestamp"]
    newest = read_manifest(tmp_path / "snap" / (tmp_path / "snap" / "latest").read_text())
    assert exposed["snapshot_last_publish_timestamp"] == newest["created_at_unix"] > 0


def run_streamd(config, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamd", "run", "--config", str(config), "--exit-when-idle", "1",
                           *extra], capture_output=True, text=True, timeout=180)


def test_restart_falls_back_refuses_when_nothing_loads_and_reset_starts_fresh(tmp_path):
    config = trained_stream(tmp_path)
    ckpt = tmp_path / "ckpt"
    folders = checkpoint_folders(ckpt)
    assert len(folders) == 2 and (ckpt / LATEST).read_text() == folders[-1].name

    # 1. LATEST's folder is gone: resume from the older one, loudly, and re-read what came after it.
    for path in folders[-1].iterdir():
        path.unlink()
    folders[-1].rmdir()
    older_records = load_checkpoint(ckpt)["counters"]["records_seen"]
    consumed = consumed_count(tmp_path / "audit.log")
    result = run_streamd(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"FALLING BACK to checkpoint {folders[0].name}" in result.stderr
    assert f'"resumed_from": "step {int(folders[0].name.split("-")[1])}"' in result.stdout
    assert consumed_count(tmp_path / "audit.log") - consumed == RECORDS - older_records > 0

    # 2. Every checkpoint unloadable: refuse to start, one clear message, no traceback, exit 1.
    for folder in checkpoint_folders(ckpt):
        (folder / "state.pt").write_bytes(b"not a checkpoint")
    broken = sorted(p.name for p in checkpoint_folders(ckpt))
    result = run_streamd(config)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "holds checkpoints but none loads" in result.stderr and "--reset" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""

    # 3. --reset: start fresh, say what was ignored, keep the old folders aside.
    result = run_streamd(config, "--reset")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--reset: ignoring {len(broken)} checkpoint(s)" in result.stderr
    assert '"resumed_from": null' in result.stdout and f'"records_seen": {RECORDS}' in result.stdout
    (aside,) = ckpt.glob("reset-*")
    assert sorted(p.name for p in aside.iterdir()) == sorted([*broken, LATEST])
    assert load_checkpoint(ckpt)["counters"]["records_seen"] == RECORDS
