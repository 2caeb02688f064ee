"""The image built from the repository's Dockerfile and run the way deploy/k8s/statefulset.yaml runs
it: uid 10001, read-only root filesystem, the state volume mounted, the API token set, a directory
stream mounted read-only as input. Uses podman (no Docker engine here); ``make test-container``
prepares the host with deploy/podman/host-setup.sh and runs this module (``-m container``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from daemon_fixtures import TINY, produce_dir, wait_until
from safetensors.torch import load_file

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/streamd:test"
TOKEN = "container-test-token"
STATE, INBOX = "/var/lib/streamd", "/data/inbox"
PER_TASK = 48


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def image() -> dict:
    """Builds the image once per run (podman's layer cache makes a rebuild cheap); its figures."""
    assert shutil.which("podman"), "podman is missing: run `make test-container` (deploy/podman/host-setup.sh)"
    started = time.monotonic()
    build = subprocess.run([sys.executable, str(ROOT / "deploy/podman/build.py"), "--tag", IMAGE],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    seconds = time.monotonic() - started
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    print(f"image {IMAGE}: built in {seconds:.1f} s, {size / 1e9:.2f} GB")
    return {"build_seconds": seconds, "size_bytes": size}


class Container:
    """One named container over a state folder and an inbox on the host, published on a free port."""

    def __init__(self, tmp: Path):
        self.name = f"streamd-test-{os.getpid()}-{time.monotonic_ns()}"
        self.state, self.inbox = tmp / "state", tmp / "inbox"
        self.state.mkdir()
        os.chown(self.state, 10001, 10001)   # a fresh volume as the pod's fsGroup would leave it
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def create(self) -> None:
        env = {"STREAMD_API__TOKEN": TOKEN, "STREAMD_SOURCE__DIRECTORY__PATH": INBOX,
               "STREAMD_SOURCE__DIRECTORY__SETTLE_SECONDS": "0.2",
               "STREAMD_MODEL__ARCH": TINY["arch"], "STREAMD_MODEL__IMAGE_SIZE": str(TINY["image_size"]),
               "STREAMD_LEARNER__BATCH_SIZE": "16", "STREAMD_LEARNER__MAX_WAIT_SECONDS": "0.5",
               "STREAMD_CHECKPOINT__EVERY_STEPS": "0", "STREAMD_CHECKPOINT__EVERY_SECONDS": "0",
               "STREAMD_SNAPSHOTS__EVERY_STEPS": "2", "STREAMD_PROBE__EVERY_STEPS": "2",
               "STREAMD_LOGGING__PROGRESS_SECONDS": "1"}
        podman("create", "--name", self.name, "--user", "10001:10001", "--read-only", "--tmpfs", "/tmp",
               "--volume", f"{self.state}:{STATE}", "--volume", f"{self.inbox}:{INBOX}:ro",
               "--publish", f"127.0.0.1:{self.port}:9400", *[f"--env={k}={v}" for k, v in env.items()], IMAGE)

    def start(self) -> None:
        podman("start", self.name)

    def running(self) -> bool:
        return podman("inspect", self.name, "--format", "{{.State.Running}}").stdout.strip() == "true"

    def logs(self) -> str:
        out = podman("logs", self.name)
        return out.stdout + out.stderr

    def status(self, path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return httpx.get(self.url + path, headers=headers, timeout=5).status_code
        except httpx.TransportError:
            return 0

    def wait_for(self, predicate, what: str, timeout: float = 180) -> None:
        def check():
            if not self.running():
                raise AssertionError(f"the container exited while waiting for {what}:\n{self.logs()[-4000:]}")
            return predicate()
        wait_until(check, timeout, what)

    def stop(self) -> int:
        """SIGTERM (podman's stop signal), then the container's exit code."""
        podman("stop", "--time", "60", self.name, timeout=90)
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout.strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def summaries(logs: str) -> list[dict]:
    """The JSON summary each run prints at exit, oldest first."""
    return [json.loads(block) for block in re.findall(r"^\{\n.*?^\}", logs, re.S | re.M)]


def log_lines(logs: str, *patterns: str) -> list[str]:
    """The first log line matching each pattern, for the test's report."""
    lines = logs.splitlines()
    return [next((ln for ln in lines if re.search(p, ln)), f"<no line matches {p!r}>") for p in patterns]


def test_the_image_runs_as_the_statefulset_runs_it(image, tmp_path):
    container = Container(tmp_path)
    produce_dir(container.inbox, tasks=2, per_task=PER_TASK)
    container.create()
    try:
        container.start()
        # The kubelet's probes carry no token; the snapshots need it.
        container.wait_for(lambda: container.status("/readyz") == 200, "/readyz 200 without a token")
        assert container.status("/healthz") == 200
        assert container.status("/v1/snapshots") == 401
        assert container.status("/v1/snapshots", TOKEN) == 200
        assert podman("healthcheck", "run", container.name, check=False).returncode == 0   # with the read-only root

        # It trains and publishes; `streamd pull` verifies a snapshot from outside the container.
        container.wait_for(lambda: httpx.get(f"{container.url}/v1/snapshots", timeout=5,
                                             headers={"Authorization": f"Bearer {TOKEN}"}).json()["latest"],
                           "a published snapshot")
        pulled = tmp_path / "pulled"
        pull = subprocess.run([sys.executable, "-m", "streamd.cli", "pull", container.url, "--out", str(pulled),
                               "--token", TOKEN], capture_output=True, text=True, timeout=120)
        assert pull.returncode == 0, pull.stdout + pull.stderr
        assert load_file(pulled / "model.safetensors")
        # Consumers under other uids read the shared volume directly.
        published = [p for p in (container.state / "snapshots").rglob("*") if not p.name.startswith(".")]
        assert published and all(p.stat().st_mode & (stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
                                 == (stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0)) for p in published)

        # SIGTERM after the whole stream: exit 0 after a shutdown checkpoint.
        container.wait_for(lambda: f"records {2 * PER_TASK} " in container.logs(), "the whole stream read")
        assert container.stop() == 0
        first_logs = container.logs()
        first = summaries(first_logs)[-1]
        assert first["records_seen"] == 2 * PER_TASK and first["resumed_from"] is None
        assert re.search(r"checkpoint \S+ \(shutdown\) durable", first_logs), first_logs[-3000:]

        # A restarted container resumes from it and reads only what is new: the record count is
        # cumulative, so a record read twice would show as more than three tasks' worth.
        produce_dir(tmp_path / "more", tasks=3, per_task=PER_TASK)
        shutil.copytree(tmp_path / "more" / "task-002", container.inbox / "task-002",
                        copy_function=shutil.copyfile)   # new modification times, as a new arrival has
        container.start()
        container.wait_for(lambda: container.status("/readyz") == 200, "/readyz after the restart")
        after_restart = lambda: container.logs().split("resumed from the checkpoint", 1)[-1]  # noqa: E731
        assert f"step {first['steps']}\n" in after_restart()
        container.wait_for(lambda: f"records {3 * PER_TASK} " in after_restart(), "the new task read")
        assert container.stop() == 0
        logs = container.logs()
        second = summaries(logs)[-1]
        assert second["resumed_from"] and second["records_seen"] == 3 * PER_TASK
        assert second["steps"] > first["steps"] and second["tasks"] == first["tasks"] + 1
        print("\n".join(log_lines(logs, r"starting fresh", r"daemon ready", r"\| steps [1-9]", r"published snapshot",
                                  r"SIGTERM received", r"\(shutdown\) durable", r"resumed from the checkpoint")))
    finally:
        container.remove()


def test_the_runtime_image_has_no_test_or_bench_dependencies(image):
    probe = "import importlib.util as u; print([m for m in ('pytest', 'matplotlib', 'mlxtend') if u.find_spec(m)])"
    out = podman("run", "--rm", "--read-only", "--entrypoint", "python", IMAGE, "-c", probe)
    assert out.stdout.strip() == "[]"
    needs_extra = podman("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "streamd", IMAGE,
                         "produce", "dir", "--dataset", "mnist5k", "--out", "/tmp/stream", check=False)
    assert needs_extra.returncode == 2 and "pip install 'streamd[bench]'" in needs_extra.stderr


def test_a_state_volume_the_uid_cannot_write_stops_the_start_in_one_line(image, tmp_path):
    """A volume left owned by root (no fsGroup, no chown): exit 7 and what to do, not a traceback."""
    state = tmp_path / "root-owned"
    state.mkdir(mode=0o755)
    out = podman("run", "--rm", "--user", "10001:10001", "--read-only", "--tmpfs", "/tmp",
                 "--volume", f"{state}:{STATE}", IMAGE, check=False)
    assert out.returncode == 7 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"streamd: checkpoint.dir {STATE}/checkpoints cannot be written by uid 10001: Permission denied")
