"""Helpers for the tests that run the daemon as a real process (shared with ``streamd bench chaos``)."""
from __future__ import annotations

from streamd.service.audit import Run, consumed_count, delivery, read_audit  # noqa: F401 -- re-exported for the tests
from streamd.bench._daemons import (TINY, DaemonProcess, kafka_source_toml, produce_dir,  # noqa: F401
                                    produce_kafka, start_daemon, wait_until, write_config)


def assert_exactly_once_up_to_checkpoints(runs: list[Run], expected: set[str]) -> int:
    """No position skipped; a position is seen again only if it came after the last checkpoint of
    the run that saw it before. Returns how many positions were seen twice."""
    d = delivery(runs, expected)
    assert not d.lost and not d.unknown, f"skipped: {d.lost[:5]}, unknown: {d.unknown[:5]}"
    assert not d.repeated_in_run, f"a run consumed a position twice: {d.repeated_in_run[:5]}"
    assert not d.repeated_durable, f"positions covered by a durable checkpoint were read again: {d.repeated_durable[:5]}"
    return d.seen_twice
