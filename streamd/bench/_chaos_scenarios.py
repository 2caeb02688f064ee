"""The chaos scenarios: each builds a stream, runs the real daemon through one kind of fault and
returns its Row. Counts and durations come from the caller, so the same code runs the full suite
and the quick subset that ``make test`` runs."""
from __future__ import annotations

import random
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from streamd.service.audit import NOT_RECORDS
from streamd.bench._broker import Broker, create_topic
from streamd.bench._chaos_harness import Row, Scenario, Watched, directory_positions
from streamd.bench._daemons import kafka_source_toml, produce_dir, produce_kafka

KILL_MOMENTS = ("checkpoint", "startup", "running")
FRESH_PER_RUN = 96   # records added before each later run: 6 steps of the chaos config (batch 16)
# Test-only fault (see streamd.bench._faults): every checkpoint pauses after its files
# are written and synced, before the rename, so a kill while the temp folder exists is mid-checkpoint.
CHECKPOINT_PAUSE = "checkpoint_sleep=0.5"


def wait_for(predicate, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def kill_at(scenario: Scenario, moment: str, rng: random.Random) -> str:
    """Starts a run and kill -9s it at the moment asked for; returns the moment it really was."""
    run = scenario.start(faults=CHECKPOINT_PAUSE if moment == "checkpoint" else None)
    ckpt = scenario.folder / "ckpt"
    if moment == "startup":
        time.sleep(rng.uniform(0.2, 2.0))
    elif moment == "checkpoint":   # a checkpoint's temp folder exists only while it is being written
        caught = wait_for(lambda: any(ckpt.glob(".tmp-ckpt-*")) or run.daemon.proc.poll() is not None, 30, poll=0.002)
        moment = moment if caught and any(ckpt.glob(".tmp-ckpt-*")) else "running (no checkpoint caught)"
    else:
        before = scenario.consumed()
        wait_for(lambda: scenario.consumed() > before or run.daemon.proc.poll() is not None, 60)
        time.sleep(rng.uniform(0.0, 1.5))
    if run.daemon.proc.poll() not in (None, 0):
        scenario.crashes += 1
    run.kill9()
    return moment


def kill9(folder: Path, kind: str, kills: int, per_task: int, seed: int = 0, bootstrap: str | None = None) -> Row:
    """kill -9 at ``kills`` moments (cycling mid-checkpoint, startup, running), then a run that drains.
    Every run after the first gets FRESH_PER_RUN new records, so each has steps to take and a
    checkpoint to write when it is killed (not an idle daemon)."""
    rng = random.Random(seed)
    inbox = folder / "inbox"
    if kind == "kafka":
        topic = create_topic(bootstrap, prefix="chaos")
        scenario = Scenario(folder, kafka_source_toml(bootstrap, topic, f"chaos-{topic}"))

        def feed(run: int, tasks: int, per: int) -> None:
            produce_kafka(bootstrap, topic, tasks, per)
    else:
        scenario = Scenario(folder)

        def feed(run: int, tasks: int, per: int) -> None:
            produce_dir(inbox / f"run-{run:02d}", tasks, per)
    feed(0, 3, per_task)
    moments = []
    for i in range(kills):
        if i:
            feed(i, 1, FRESH_PER_RUN)
        moments.append(kill_at(scenario, KILL_MOMENTS[i % len(KILL_MOMENTS)], rng))
    scenario.drain()
    sent = 3 * per_task + (kills - 1) * FRESH_PER_RUN
    expected = {f"{topic}:0@{o}" for o in range(sent)} if kind == "kafka" else directory_positions(inbox)
    row = scenario.score(f"kill -9 ({kind})", f"{kills} x kill -9: {', '.join(sorted(set(moments)))}", expected)
    row.notes["kill_moments"] = {m: moments.count(m) for m in sorted(set(moments))}
    return row


def broker_restart(folder: Path, per_task: int) -> Row:
    """The broker dies and an empty one takes its place (same address, the topic made again, fewer
    records than the daemon had read): the daemon, configured to re-read a replaced topic from its
    start, must notice the stale offsets and read every new record, without a restart of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    with Broker(folder / "broker.log") as broker:
        topic = create_topic(broker.bootstrap, prefix="replaced")
        produce_kafka(broker.bootstrap, topic, 3, per_task)
        first = {f"{topic}:0@{o}" for o in range(3 * per_task)}
        scenario = Scenario(folder, kafka_source_toml(broker.bootstrap, topic, f"replaced-{topic}",
                                                      on_offsets_beyond_log_end="reset_to_log_start"))
        run = scenario.start()
        wait_for(lambda: scenario.consumed() >= len(first) or run.daemon.proc.poll() is not None, 300)
        read_before = len(scenario.audit.read_text().splitlines())
        broker.kill()
        broker.start()
        create_topic(broker.bootstrap, name=topic)
        produce_kafka(broker.bootstrap, topic, 1, per_task)
        replaced = time.monotonic()
        wait_for(lambda: scenario.consumed() > len(first) or run.daemon.proc.poll() is not None, 180)
        recovered = time.monotonic() - replaced
        wait_for(lambda: scenario.consumed() >= len(first) + per_task or run.daemon.proc.poll() is not None, 180)
        _stop(scenario, run)
    # The new topic's positions repeat the old ones' names: told apart by when they were read.
    lines = scenario.audit.read_text().splitlines()
    scored = folder / "audit-scored.log"
    scored.write_text("\n".join(lines[:read_before] + [_mark_new(line) for line in lines[read_before:]]) + "\n")
    expected = first | {f"new:{topic}:0@{o}" for o in range(per_task)}
    return scenario.score("broker replaced", "broker killed, an empty one started on the same address, "
                          "topic made again with fewer records", expected, [recovered], audit=scored)


def _mark_new(line: str) -> str:
    status, _, value = line.partition("\t")
    return line if status in NOT_RECORDS else f"{status}\tnew:{value}"


def broker_freeze(folder: Path, broker: Broker, seconds: float, per_task: int) -> Row:
    """SIGSTOP the broker for ``seconds`` while the daemon reads, then SIGCONT; the same run goes on."""
    topic = create_topic(broker.bootstrap, prefix="freeze")
    produce_kafka(broker.bootstrap, topic, 3, per_task)
    scenario = Scenario(folder, kafka_source_toml(broker.bootstrap, topic, f"freeze-{topic}"))
    run = scenario.start(exit_when_idle=5.0)
    wait_for(lambda: scenario.consumed() >= per_task // 2, 120)
    broker.freeze()
    time.sleep(seconds)
    broker.thaw()
    thawed, before = time.monotonic(), scenario.consumed()
    wait_for(lambda: scenario.consumed() > before or run.daemon.proc.poll() is not None, 180)
    recovered = time.monotonic() - thawed
    try:
        run.wait(timeout=600)
    except (AssertionError, subprocess.TimeoutExpired):
        scenario.crashes += 1
        scenario.drain()
    expected = {f"{topic}:0@{o}" for o in range(3 * per_task)}
    return scenario.score("broker frozen", f"broker SIGSTOP for {seconds:g} s mid-stream", expected, [recovered])


@contextmanager
def tmpfs(path: Path, size: str):
    """A real small filesystem (needs root): a full disk for real, not a mocked ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fills the filesystem under ``folder`` to the last byte; returns the filler file."""
    filler = folder / ".filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError:
            pass
    return filler


def disk_full(folder: Path, per_task: int, full_seconds: float) -> Row:
    """Checkpoint and snapshot folders on full filesystems while the daemon trains (every checkpoint
    and snapshot fails), then room again and more records: recovery is the time to the first durable
    checkpoint. A SIGTERM and a last run follow on the same filesystems, which must re-read nothing
    that a checkpoint covered."""
    inbox = folder / "inbox"
    produce_dir(inbox / "while-full", 3, per_task)
    scenario = Scenario(folder)
    with tmpfs(folder / "ckpt", "8m") as ckpt, tmpfs(folder / "snap", "8m") as snap:
        fillers = [fill(ckpt), fill(snap)]
        run = scenario.start()
        wait_for(lambda: scenario.consumed() >= 3 * per_task or run.daemon.proc.poll() is not None, 300)
        time.sleep(full_seconds)
        durable_while_full = (ckpt / "LATEST").exists()
        for filler in fillers:
            filler.unlink()
        freed = time.monotonic()
        produce_dir(inbox / "after", 1, per_task)
        wait_for(lambda: (ckpt / "LATEST").exists() or run.daemon.proc.poll() is not None, 120)
        recovered = time.monotonic() - freed
        durable_after_room = (ckpt / "LATEST").exists()
        summary = _stop(scenario, run)
        scenario.drain()
    row = scenario.score("disk full", f"checkpoint + snapshot folders full while {3 * per_task} records trained "
                         f"and {full_seconds:g} s more, then room and {per_task} more records",
                         directory_positions(inbox), [recovered])
    row.notes.update(checkpoint_failures=summary.get("checkpoint_failures"), durable_while_full=durable_while_full,
                     durable_after_room=durable_after_room, snapshots=summary.get("snapshots"))
    if not durable_after_room:
        row.violations.append("no durable checkpoint within 120 s of room on the disk")
    return row


def _stop(scenario: Scenario, run: Watched) -> dict:
    """SIGTERM and the run's summary; an exit the harness did not cause, or a failed stop, is a crash."""
    if run.daemon.proc.poll() is not None:
        scenario.crashes += 1
    run.daemon.kill(signal.SIGTERM)
    try:
        return run.wait(timeout=120)
    except (AssertionError, subprocess.TimeoutExpired):
        scenario.crashes += 1
        run.kill9()
        return {}
