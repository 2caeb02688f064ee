"""Dead letters: written through the sink, or kept for a retry while the sink is broken.

A record is acked only once its dead letter is written. One the sink could not take (a full disk,
a broker outage) is not acked: its position stays un-committed, so a crash re-reads it and a
restart tries again. While the sink stays broken the retries back off (1 s doubling to 30 s), and
the daemon stops reading new records once ``dead_letter.max_backlog`` of them wait.
"""
from __future__ import annotations

import logging
import time

from streamd.connectors.base import DeadLetterSink, Record
from streamd.service.metrics import Metrics

FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0

log = logging.getLogger("streamd.daemon")


class UndeliveredDeadLetters:
    def __init__(self, clock=time.monotonic):
        self._waiting: dict[int, tuple[Record, str]] = {}   # id(record) -> (record, reason), oldest first
        self._clock = clock
        self._backoff = FIRST_BACKOFF_S
        self._next_try = 0.0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, record: Record, reason: str) -> None:
        if not self._waiting:
            self._backoff, self._next_try = FIRST_BACKOFF_S, self._clock() + FIRST_BACKOFF_S
        self._waiting[id(record)] = (record, reason)

    def due(self) -> list[tuple[Record, str]]:
        """The waiting dead letters, oldest first, once the backoff has passed; else nothing."""
        if not self._waiting or self._clock() < self._next_try:
            return []
        return list(self._waiting.values())

    def delivered(self, record: Record) -> None:
        del self._waiting[id(record)]
        self._backoff = FIRST_BACKOFF_S

    def failed_again(self) -> None:
        self._next_try = self._clock() + self._backoff
        self._backoff = min(MAX_BACKOFF_S, self._backoff * 2)


class DeadLetterOffice:
    """The daemon's side of dead letters: send now, or keep the record un-acked for a retry."""

    def __init__(self, sink: DeadLetterSink, metrics: Metrics, max_backlog: int):
        self.sink, self.metrics, self.max_backlog = sink, metrics, max_backlog
        self.undelivered = UndeliveredDeadLetters()

    @property
    def full(self) -> bool:
        """Too many dead letters wait for a broken sink: read nothing new until they are written."""
        return len(self.undelivered) >= self.max_backlog

    def send(self, record: Record, reason: str) -> bool:
        """True once written (ack the record); False: it waits, un-acked, for ``retry``."""
        log.warning("dead-lettering %s: %s", record.position, reason)
        if self._deliver(record, reason):
            return True
        self.undelivered.add(record, reason)
        return False

    def retry(self) -> list[tuple[Record, str]]:
        """The waiting records whose dead letter is written now, as (record, audit status) to ack."""
        written = []
        for record, reason in self.undelivered.due():
            if not self._deliver(record, reason):
                self.undelivered.failed_again()
                break
            self.undelivered.delivered(record)
            written.append((record, f"dead:{reason}"))
        self.metrics.dead_letter_backlog.set(len(self.undelivered))
        return written

    def _deliver(self, record: Record, reason: str) -> bool:
        try:
            self.sink.send(record, reason)
        except Exception as exc:  # noqa: BLE001 -- any sink failure: keep training, keep the record un-acked
            self.metrics.dead_letter_failures.inc()
            log.error("dead-letter sink failed for %s (%s: %s); the record stays un-acked and is retried",
                      record.position, type(exc).__name__, exc)
            return False
        self.metrics.records_dead_lettered.labels(reason).inc()
        return True

    def close(self) -> None:
        if self.undelivered:
            log.warning("%d dead letters could not be written; their records stay un-acked and are read again "
                        "after a restart", len(self.undelivered))
        self.sink.close()
