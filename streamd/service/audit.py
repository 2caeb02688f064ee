"""The audit log read back: what each daemon run consumed, split at its last durable checkpoint.

The daemon writes (with ``audit_log`` set) ``start\\tPID`` when it starts, ``STATUS\\tPOSITION`` for
every record it acks (``trained``, ``held_out`` or ``dead:REASON``) and ``checkpoint\\tNAME`` once a
checkpoint is durable. Replaying it proves the delivery contract after crashes: no position is
skipped, and a position is seen again only if the run that saw it first had not yet checkpointed it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

NOT_RECORDS = ("start", "checkpoint")


@dataclass
class Run:
    """One daemon process's part of the audit log."""

    durable: list[str] = field(default_factory=list)   # positions acked before its last durable checkpoint
    tail: list[str] = field(default_factory=list)      # positions acked after it (may be seen again)
    statuses: Counter = field(default_factory=Counter)

    @property
    def positions(self) -> list[str]:
        return self.durable + self.tail


def read_audit(path: Path) -> list[Run]:
    runs: list[Run] = []
    for line in Path(path).read_text().splitlines():
        status, _, value = line.partition("\t")
        if status == "start":
            runs.append(Run())
        elif status == "checkpoint":
            runs[-1].durable += runs[-1].tail
            runs[-1].tail = []
        else:
            runs[-1].tail.append(value)
            runs[-1].statuses[status] += 1
    return runs


def consumed_count(path: Path) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if not line.startswith(NOT_RECORDS))


@dataclass
class Delivery:
    """How a set of runs delivered the expected positions."""

    lost: list[str]                 # expected, never acked
    unknown: list[str]              # acked, never expected
    seen_twice: int                 # acked again by a later run (allowed after the earlier run's last checkpoint)
    repeated_durable: list[str]     # acked again although a durable checkpoint covered them: a contract breach
    repeated_in_run: list[str]      # acked twice by one run: a contract breach


def delivery(runs: list[Run], expected: set[str]) -> Delivery:
    seen = {p for r in runs for p in r.positions}
    repeated_durable, repeated_in_run, seen_twice = [], [], 0
    for i, run in enumerate(runs):
        counts = Counter(run.positions)
        repeated_in_run += [p for p, n in counts.items() if n > 1]
        later = {p for r in runs[i + 1:] for p in r.positions}
        repeated_durable += sorted(set(run.durable) & later)
        seen_twice += len(set(run.tail) & later)
    return Delivery(sorted(expected - seen), sorted(seen - expected), seen_twice, repeated_durable, repeated_in_run)
