"""What every chaos scenario shares: a work folder with a tiny daemon config, the expected positions,
daemon runs watched from outside (exit status, peak RSS, time to the first record), and the row.

A row's numbers come only from what the daemon left behind (its audit log and JSON summary) and
from what the harness itself did (records sent, kills, faults), never from the daemon's own claims
about success.
"""
from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streamd.service.audit import consumed_count, delivery, read_audit
from streamd.bench._daemons import DaemonProcess, start_daemon, write_config


def directory_positions(inbox: Path) -> set[str]:
    """The position string the directory source gives each image file under ``inbox``."""
    return {f"{p.relative_to(inbox).as_posix()}@{p.stat().st_ctime_ns}" for p in inbox.rglob("*")
            if p.is_file() and p.suffix != ".json" and not p.name.startswith(".")}


def peak_rss_bytes(pid: int) -> int | None:
    """The process's high-water resident set (VmHWM), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Watched:
    """A daemon process plus a thread that samples its peak RSS until it exits."""

    def __init__(self, daemon: DaemonProcess, audit: Path):
        self.daemon, self.audit = daemon, audit
        self.started = time.monotonic()
        self.consumed_at_start = consumed_count(audit)
        self.first_record_s: float | None = None
        self.peak_rss = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        pid = self.daemon.proc.pid
        while self.daemon.proc.poll() is None:
            self.peak_rss = max(self.peak_rss, peak_rss_bytes(pid) or 0)
            if self.first_record_s is None and consumed_count(self.audit) > self.consumed_at_start:
                self.first_record_s = time.monotonic() - self.started
            time.sleep(0.05)

    def kill9(self) -> None:
        self.daemon.kill()
        self.daemon.proc.wait(timeout=30)
        self._thread.join(timeout=5)

    def wait(self, timeout: float) -> dict:
        summary = self.daemon.wait(timeout)
        self._thread.join(timeout=5)
        return summary


@dataclass
class Row:
    scenario: str
    faults: str                                   # what the harness did, in words
    records_sent: int = 0
    trained: int = 0
    held_out: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    lost: int = 0                                 # sent, never acked: must be 0
    seen_twice: int = 0                           # acked again after a crash (allowed after the last checkpoint)
    repeated_after_checkpoint: int = 0            # acked again although checkpointed: must be 0
    crashes: int = 0                              # daemon exits the harness did not cause
    recover_seconds_median: float | None = None   # restart (or fault end) to the first record acked again
    recover_seconds_max: float | None = None
    peak_rss_mb: float = 0.0
    violations: list[str] = field(default_factory=list)   # scenario-specific limits that did not hold
    notes: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.repeated_after_checkpoint == 0 and self.crashes == 0 and not self.violations

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class Scenario:
    """A work folder with a daemon config; runs are started, watched and finally scored from the audit log."""

    def __init__(self, folder: Path, source_toml: str = "", **config):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = write_config(folder, source_toml, **config)
        self.audit = folder / "audit.log"
        self.runs: list[Watched] = []
        self.crashes = 0

    def start(self, exit_when_idle: float | None = None, faults: str | None = None) -> Watched:
        run = Watched(start_daemon(self.config, exit_when_idle=exit_when_idle, faults=faults), self.audit)
        self.runs.append(run)
        return run

    def consumed(self) -> int:
        return consumed_count(self.audit)

    def drain(self, exit_when_idle: float = 3.0, timeout: float = 600) -> dict:
        """A last run that reads everything left and exits; a non-zero exit counts as a crash."""
        run = self.start(exit_when_idle)
        try:
            return run.wait(timeout)
        except (AssertionError, subprocess.TimeoutExpired):
            self.crashes += 1
            run.daemon.kill()
            raise

    def score(self, name: str, faults: str, expected: set[str], recoveries: list[float] | None = None,
              audit: Path | None = None) -> Row:
        """The row, from ``audit`` (default: the daemon's own audit log)."""
        runs = read_audit(audit or self.audit)
        d = delivery(runs, expected)
        statuses = sum((r.statuses for r in runs), Counter())
        recoveries = sorted(recoveries if recoveries is not None else
                            [r.first_record_s for r in self.runs[1:] if r.first_record_s is not None])
        return Row(scenario=name, faults=faults, records_sent=len(expected), trained=statuses["trained"],
                   held_out=statuses["held_out"],
                   dead_lettered={k.removeprefix("dead:"): v for k, v in sorted(statuses.items())
                                  if k.startswith("dead:")},
                   lost=len(d.lost), seen_twice=d.seen_twice,
                   repeated_after_checkpoint=len(d.repeated_durable) + len(d.repeated_in_run),
                   crashes=self.crashes,
                   recover_seconds_median=round(recoveries[len(recoveries) // 2], 2) if recoveries else None,
                   recover_seconds_max=round(recoveries[-1], 2) if recoveries else None,
                   peak_rss_mb=round(max(r.peak_rss for r in self.runs) / 2**20, 1) if self.runs else 0.0)
