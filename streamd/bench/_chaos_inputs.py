"""The hostile-input chaos scenarios: the fuzz corpus through a watched folder, and poison records on
a real topic. Both feed one running daemon after it reached its steady state, so the peak memory the
input adds can be read against that state."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from streamd.bench._broker import create_topic
from streamd.bench._chaos_harness import Row, Scenario, directory_positions
from streamd.bench._chaos_scenarios import CHECKPOINT_PAUSE, wait_for
from streamd.bench._daemons import kafka_source_toml, produce_dir, produce_kafka, produce_poison
from streamd.bench._fuzz_bytes import digit, encode
from streamd.bench.fuzz_inputs import fuzz_records, write_to_directory

# The bound: hostile input may raise the daemon's peak resident memory by half its steady state.
MAX_RSS_OVER_STEADY = 1.5


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def fuzz(folder: Path, cases: int, per_task: int, seed: int = 0) -> Row:
    """Ordinary images until the daemon has trained, checkpointed and crossed a task boundary (its
    steady state), then ``cases`` fuzzed inputs moved into the same watched folder at once. The
    folder source takes one image per file: Arrow messages arrive as unsupported files (their rows
    are fuzzed through ingest and the Parquet source in the tests)."""
    inbox = folder / "inbox"
    produce_dir(inbox / "steady", 2, per_task)
    expected = {f"steady/{p}" for p in directory_positions(inbox / "steady")}
    staging = folder / "staging"
    written = write_to_directory(fuzz_records(cases, seed), staging)
    scenario = Scenario(folder)
    run = scenario.start(exit_when_idle=5.0)
    wait_for(lambda: scenario.consumed() >= len(expected) and (folder / "ckpt" / "LATEST").exists(), 300)
    steady = run.peak_rss
    shutil.move(staging, inbox / "fuzz")    # one rename: every case appears in the inbox at once
    expected |= {f"fuzz/{p}" for p in directory_positions(inbox / "fuzz")}
    try:
        run.wait(timeout=900)
    except Exception:   # noqa: BLE001 -- a crash or hang is what this row reports
        scenario.crashes += 1
        run.kill9()
        scenario.drain()
    row = scenario.score("fuzzed inputs", f"{cases} fuzzed files ({len({c.kind for c in written.values()})} "
                         f"kinds) into the watched folder after {len(expected) - cases} ordinary images",
                         expected, [])
    ratio = round(run.peak_rss / steady, 3) if steady else None
    row.notes.update(steady_rss_mb=round(steady / 2**20, 1), rss_peak_over_steady=ratio)
    if ratio is None or ratio > MAX_RSS_OVER_STEADY:
        row.violations.append(f"peak RSS {ratio}x the steady state (limit {MAX_RSS_OVER_STEADY}x)")
    return row


def poison(folder: Path, bootstrap: str, per_task: int, seed: int = 0) -> Row:
    """Odd and unparseable records amid ordinary ones on a real topic; a kill -9 right after the
    unparseable one was dead-lettered, so the restarted daemon most likely meets it again."""
    topic = create_topic(bootstrap, prefix="poison")
    produce_kafka(bootstrap, topic, 1, per_task)
    png = encode(digit(random.Random(seed), 16), "PNG")
    sent = per_task + produce_poison(bootstrap, topic, png)
    produce_kafka(bootstrap, topic, 1, per_task)
    sent += per_task
    scenario = Scenario(folder, kafka_source_toml(bootstrap, topic, f"poison-{topic}"))
    run = scenario.start(faults=CHECKPOINT_PAUSE)   # slower checkpoints: the kill most likely precedes the next
    wait_for(lambda: "dead:unparseable_record" in _text(scenario.audit) or run.daemon.proc.poll() is not None, 120)
    if run.daemon.proc.poll() is not None:
        scenario.crashes += 1
    run.kill9()
    scenario.drain()
    return scenario.score("poison records", f"{sent - 2 * per_task} odd records (one unparseable) amid "
                          f"{2 * per_task} images; one kill -9", {f"{topic}:0@{o}" for o in range(sent)})
