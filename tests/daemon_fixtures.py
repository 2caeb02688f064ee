"""Helpers for the tests that run the daemon as a real process: a tiny config, start/stop, the audit log."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamd.cli import main as streamd_main

PYTHON = sys.executable
TINY = {"arch": "resnet_tiny", "image_size": 16,
        "objective_kwargs": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 16}}


def kafka_source_toml(bootstrap: str, topic: str, group: str) -> str:
    """The [source] snippet of a daemon reading ``topic`` with the fast test client settings."""
    from conftest import FAST_CLIENT

    options = ", ".join(f"{k} = {v}" for k, v in FAST_CLIENT.items())
    return f"""[source]
kind = "kafka"
[source.kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
group_id = "{group}"
max_poll_records = 32
client_options = {{{options}}}
"""


def produce_kafka(bootstrap: str, topic: str, tasks: int, per_task: int) -> None:
    """`streamd produce kafka` of digits split by class, with task/label headers."""
    assert streamd_main(["produce", "kafka", "--bootstrap-servers", bootstrap, "--topic", topic, "--dataset", "digits",
                         "--split", "class", "--tasks", str(tasks), "--per-task", str(per_task),
                         "--image-size", "16"]) == 0


def write_config(tmp: Path, source: str = "", checkpoint_dir: str = "ckpt", strategy: str = "finetune",
                 plugin_options: dict[str, dict[str, int]] | None = None) -> Path:
    """A tiny daemon config under ``tmp``; ``source`` is a raw TOML snippet (e.g. a Kafka source)."""
    kw = ", ".join(f"{k} = {v}" for k, v in TINY["objective_kwargs"].items())
    options = "".join(f"[strategy.plugin_options.{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                      for name, values in (plugin_options or {}).items())
    text = f"""
audit_log = "{tmp / 'audit.log'}"
[source.directory]
path = "{tmp / 'inbox'}"
settle_seconds = 0.1
[dead_letter]
path = "{tmp / 'dead'}"
[model]
arch = "{TINY['arch']}"
image_size = {TINY['image_size']}
objective_kwargs = {{{kw}}}
[strategy]
name = "{strategy}"
{options}[learner]
device = "cpu"
batch_size = 16
max_wait_seconds = 0.5
[boundary]
mode = "header"
[checkpoint]
dir = "{tmp / checkpoint_dir}"
every_steps = 3
every_seconds = 0
[snapshots]
dir = "{tmp / 'snap'}"
every_seconds = 0
[probe]
per_task = 4
every_steps = 1000
history_dir = "{tmp / 'probe'}"
[api]
port = 0
[logging]
progress_seconds = 1
""" + source
    path = tmp / "streamd.toml"
    path.write_text(text)
    return path


def produce_dir(inbox: Path, tasks: int, per_task: int, dataset: str = "digits", headers: bool = True) -> None:
    """The real ``streamd produce dir`` (in-process: it imports what the tests already imported)."""
    args = ["produce", "dir", "--out", str(inbox), "--dataset", dataset, "--split", "class", "--tasks", str(tasks),
            "--per-task", str(per_task), "--image-size", "16"]
    assert streamd_main(args + ([] if headers else ["--no-headers"])) == 0


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    log_path: Path

    def wait(self, timeout: float) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"daemon exited {self.proc.returncode}; log:\n{self.log()[-3000:]}"
        return json.loads(out)

    def kill(self, sig=signal.SIGKILL) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_daemon(config: Path, exit_when_idle: float | None = None, env: dict | None = None) -> DaemonProcess:
    args = [PYTHON, "-m", "streamd", "run", "--config", str(config)]
    if exit_when_idle is not None:
        args += ["--exit-when-idle", str(exit_when_idle)]
    log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_path.open("wb"), text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return DaemonProcess(proc, log_path)


def wait_until(predicate, timeout: float, what: str, proc: DaemonProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.proc.returncode}) while waiting for {what}:\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; log:\n{proc.log()[-3000:]}" if proc else ""))


@dataclass
class Run:
    """One daemon process's part of the audit log."""

    durable: list[str] = field(default_factory=list)   # positions consumed before its last durable checkpoint
    tail: list[str] = field(default_factory=list)      # positions consumed after it (may be seen again)

    @property
    def positions(self) -> list[str]:
        return self.durable + self.tail


def read_audit(path: Path) -> list[Run]:
    runs: list[Run] = []
    for line in path.read_text().splitlines():
        status, _, value = line.partition("\t")
        if status == "start":
            runs.append(Run())
        elif status == "checkpoint":
            runs[-1].durable += runs[-1].tail
            runs[-1].tail = []
        else:
            runs[-1].tail.append(value)
    return runs


def consumed_count(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if not line.startswith(("start", "checkpoint")))


def assert_exactly_once_up_to_checkpoints(runs: list[Run], expected: set[str]) -> int:
    """No position skipped; a position is seen again only if it came after the last checkpoint of
    the run that saw it before. Returns how many positions were seen twice."""
    seen_all = [p for r in runs for p in r.positions]
    assert set(seen_all) == expected, f"skipped: {sorted(expected - set(seen_all))[:5]}, " \
                                      f"unknown: {sorted(set(seen_all) - expected)[:5]}"
    repeats = 0
    for i, run in enumerate(runs):
        assert len(run.positions) == len(set(run.positions)), f"run {i} consumed a position twice"
        later = {p for r in runs[i + 1:] for p in r.positions}
        assert not (set(run.durable) & later), f"run {i}: positions covered by a durable checkpoint were read again"
        repeats += len(set(run.tail) & later)
    return repeats
