"""A real Prometheus server (the Debian ``prometheus`` binary) scraping given targets every second."""
from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from conftest import free_port


@contextmanager
def running_prometheus(targets: list[str], workdir: Path, metrics_path: str = "/metrics"):
    """Yields the base URL of a Prometheus on a free loopback port with its storage in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "streamd", "metrics_path": metrics_path,
                                  "static_configs": [{"targets": targets}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200, 30, "prometheus ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def query(base: str, promql: str) -> list[dict]:
    body = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_until(check, timeout_s: float, what: str):
    """Polls ``check`` until it returns a truthy value (errors count as not yet) and returns that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
