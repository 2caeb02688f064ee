"""The real daemon as a process, for the chaos benchmark and the tests: a tiny config, data, start, kill.

Everything here drives the daemon from outside, as an operator would: a TOML file, the
``streamd`` command, signals, and the audit log and JSON summary it leaves behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streamd.cli import main as streamd_main


def _produce(args: list[str]) -> None:
    """The real ``streamd produce``, in-process; its JSON report goes to stderr (stdout is the caller's)."""
    with contextlib.redirect_stdout(sys.stderr):
        status = streamd_main(["produce", *args])
    if status != 0:
        raise RuntimeError(f"streamd produce {args[0]} exited with {status}")


PYTHON = sys.executable
TINY = {"arch": "resnet_tiny", "image_size": 16,
        "objective_kwargs": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 16}}


# Client settings that make group joins fast against tansu: the join waits half of
# session_timeout_ms, and fetch_max_wait_ms bounds an empty fetch.
FAST_CLIENT = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 100}


def kafka_source_toml(bootstrap: str, topic: str, group: str, on_offsets_beyond_log_end: str = "fail") -> str:
    """The [source] snippet of a daemon reading ``topic`` with the fast client settings."""
    options = ", ".join(f"{k} = {v}" for k, v in FAST_CLIENT.items())
    return f"""[source]
kind = "kafka"
[source.kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
group_id = "{group}"
max_poll_records = 32
on_offsets_beyond_log_end = "{on_offsets_beyond_log_end}"
client_options = {{{options}}}
"""


def produce_kafka(bootstrap: str, topic: str, tasks: int, per_task: int) -> None:
    """`streamd produce kafka` of digits split by class, with task/label headers."""
    _produce(["kafka", "--bootstrap-servers", bootstrap, "--topic", topic, "--dataset", "digits", "--split", "class",
              "--tasks", str(tasks), "--per-task", str(per_task), "--image-size", "16"])


class RawHeaderKey(str):
    """Makes kafka-python's producer write these exact bytes as a header key (it calls ``key.encode()``):
    a record whose header key is not UTF-8, which kafka-python's consumer cannot parse (a poison record)."""

    def __new__(cls, raw: bytes):
        key = super().__new__(cls, raw.decode("latin-1"))
        key.raw = raw
        return key

    def encode(self, *args, **kwargs) -> bytes:
        return self.raw


def produce_poison(bootstrap: str, topic: str, png: bytes) -> int:
    """Odd records a careless producer sends: a header key that is not UTF-8 (unparseable), a message key
    and a header value that are not UTF-8, a 10 KB header value, a content type that is not UTF-8.
    Returns how many were sent (all to partition 0, in order)."""
    from kafka import KafkaProducer

    odd = [dict(headers=[(RawHeaderKey(b"\xff\xfebad"), b"x"), ("content-type", b"image/png")]),
           dict(key=b"\xff\xfe\x00key", headers=[("content-type", b"image/png")]),
           dict(headers=[("content-type", b"image/png"), ("streamd-note", b"\xc3\x28\xa0\xa1")]),
           dict(headers=[("content-type", b"image/png"), ("streamd-note", b"n" * 10240)]),
           dict(headers=[("content-type", b"image/\xffpng")])]
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for message in odd:
        producer.send(topic, png, partition=0, **message).get(timeout=10)
    producer.close()
    return len(odd)


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
    """``streamd produce dir`` of digits split by class, with task/label sidecars unless ``headers`` is off."""
    args = ["dir", "--out", str(inbox), "--dataset", dataset, "--split", "class", "--tasks", str(tasks),
            "--per-task", str(per_task), "--image-size", "16"]
    _produce(args + ([] if headers else ["--no-headers"]))


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    log_path: Path

    def wait(self, timeout: float) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"daemon exited {self.proc.returncode}; log:\n{self.log()[-3000:]}")
        return json.loads(out)

    def kill(self, sig=signal.SIGKILL) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_daemon(config: Path, exit_when_idle: float | None = None, env: dict | None = None,
                 faults: str | None = None) -> DaemonProcess:
    """``streamd run`` as a process; ``faults`` runs it under ``streamd.bench._faults`` with that spec."""
    launcher = ["streamd.bench._faults", faults] if faults else ["streamd"]
    args = [PYTHON, "-m", *launcher, "run", "--config", str(config)]
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
