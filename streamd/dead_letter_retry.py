"""Dead letters the sink could not take (a full disk, a broker outage), waiting for a retry.

Such a record is not acked: its position stays un-committed, so a crash re-reads it and a
restart tries again. While the sink stays broken the retries back off (1 s doubling to 30 s), and
the daemon stops reading new records once ``dead_letter.max_backlog`` of them wait.
"""
from __future__ import annotations

import time

from streamd.connectors.base import Record

FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0


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
