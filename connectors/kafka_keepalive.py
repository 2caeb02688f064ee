"""A background thread that keeps a Kafka group member alive while the daemon is busy elsewhere.

kafka-python drops a member from its group when ``poll()`` is not called within
``max_poll_interval_ms``; the daemon may spend longer than that between two polls (a checkpoint,
a snapshot, a slow step, torch.compile warm-up). This thread does not rely on the daemon calling
anything: whenever the consumer has not been used for ``idle_s``, it runs the owner's
``keepalive()`` (a poll with all partitions paused: no records fetched, a pending rebalance can
complete), and every ``health_s`` it runs the owner's ``check_health()``. The owner serializes
every use of its consumer with its own lock (KafkaConsumer is not thread-safe).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class KeptAlive(Protocol):
    def idle_seconds(self) -> float: ...

    def keepalive(self) -> None: ...

    def check_health(self) -> None: ...


class KeepAliveThread:
    def __init__(self, owner: KeptAlive, idle_s: float, health_s: float, name: str):
        self.owner, self.idle_s, self.health_s = owner, idle_s, health_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Returns once the thread is gone (its current poll finishes first)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        tick = min(self.idle_s, self.health_s) / 4
        last_health = time.monotonic()
        while not self._stop.wait(tick):
            try:
                if self.owner.idle_seconds() >= self.idle_s:
                    self.owner.keepalive()
                if time.monotonic() - last_health >= self.health_s:
                    last_health = time.monotonic()
                    self.owner.check_health()
            except Exception:   # noqa: BLE001 -- the thread must outlive a broker hiccup
                log.exception("Kafka keepalive failed; retrying in %.1f s", tick)
