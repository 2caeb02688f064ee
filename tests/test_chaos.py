"""The quick subset of ``streamd bench chaos``: the real daemon through kill -9 (directory and Kafka,
at startup, while running and mid-checkpoint), full checkpoint and snapshot filesystems, a broker
replaced by an empty one, the fuzz corpus and poison records. Each row must show nothing lost,
nothing re-read that a durable checkpoint covered, no crash and no broken limit; the kill rows must
really have re-read records (else the kills hit nothing)."""
from __future__ import annotations

import pytest

from streamd.bench.chaos import render_markdown, run_chaos

QUICK = ["kill9_directory", "kill9_kafka", "broker_restart", "disk_full", "fuzz", "poison"]


@pytest.mark.slow
def test_quick_chaos_loses_nothing_and_repeats_only_after_the_last_checkpoint(tmp_path):
    results = run_chaos(QUICK, tmp_path, quick=True)
    rows = {r["scenario"]: r for r in results["rows"]}
    for row in rows.values():
        assert row["lost"] == 0 and row["repeated_after_checkpoint"] == 0 and row["crashes"] == 0, row
        assert not row["violations"], row
        assert row["trained"] + row["held_out"] + sum(row["dead_lettered"].values()) >= row["records_sent"], row
    for kind in ("directory", "kafka"):
        kills = rows[f"kill -9 ({kind})"]
        assert kills["seen_twice"] > 0 and kills["recover_seconds_median"] is not None, kills
        assert kills["notes"]["kill_moments"].get("checkpoint") == 1, kills   # the pause makes it certain
    assert rows["disk full"]["notes"]["checkpoint_failures"] > 0, "the disk really was full for the checkpoints"
    assert rows["disk full"]["notes"]["durable_after_room"] and not rows["disk full"]["notes"]["durable_while_full"]
    assert rows["broker replaced"]["recover_seconds_median"] < 60, "the new topic was read without a restart"
    fuzz = rows["fuzzed inputs"]
    assert fuzz["notes"]["rss_peak_over_steady"] <= 1.5 and len(fuzz["dead_lettered"]) >= 6, fuzz
    assert rows["poison records"]["dead_lettered"].get("unparseable_record", 0) >= 1, rows["poison records"]
    table = render_markdown(results, "streamd bench chaos --quick")
    assert table.count("\n| ") == len(rows) + 1 and results["all_ok"]
    assert table.startswith("# Reliability") and "must be 0" in table
