"""The chaos scenarios: each builds a stream, runs the real daemon through one kind of fault and
returns its Row. Counts and durations come from the caller, so the same code runs the full suite
and the quick subset that ``make test`` runs."""
from __future__ import annotations

import random
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from streamd.bench._broker import Broker, create_topic
from streamd.bench._chaos_harness import Row, Scenario, directory_positions
from streamd.bench._daemons import kafka_source_toml, produce_dir, produce_kafka

KILL_MOMENTS = ("startup", "running", "checkpoint")


def _wait(predicate, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def _kill_at(scenario: Scenario, moment: str, rng: random.Random) -> str:
    """Starts a run and kill -9s it at the moment asked for; returns the moment it really was."""
    run = scenario.start()
    ckpt = scenario.folder / "ckpt"
    if moment == "startup":
        time.sleep(rng.uniform(0.2, 2.0))
    elif moment == "checkpoint":   # a checkpoint's temp folder exists only while it is being written
        caught = _wait(lambda: any(ckpt.glob(".tmp-ckpt-*")) or run.daemon.proc.poll() is not None, 30, poll=0.002)
        moment = moment if caught and any(ckpt.glob(".tmp-ckpt-*")) else "running (no checkpoint caught)"
    else:
        before = scenario.consumed()
        _wait(lambda: scenario.consumed() > before or run.daemon.proc.poll() is not None, 60)
        time.sleep(rng.uniform(0.0, 3.0))
    if run.daemon.proc.poll() not in (None, 0):
        scenario.crashes += 1
    run.kill9()
    return moment


def kill9(folder: Path, kind: str, kills: int, per_task: int, seed: int = 0, bootstrap: str | None = None) -> Row:
    """kill -9 at ``kills`` moments (cycling startup, running, mid-checkpoint), then a run that drains."""
    rng = random.Random(seed)
    inbox = folder / "inbox"
    if kind == "kafka":
        topic = create_topic(bootstrap, prefix="chaos")
        produce_kafka(bootstrap, topic, 3, per_task)
        scenario = Scenario(folder, kafka_source_toml(bootstrap, topic, f"chaos-{topic}"))
        expected = {f"{topic}:0@{o}" for o in range(3 * per_task)}
    else:
        produce_dir(inbox, 3, per_task)
        scenario = Scenario(folder)
        expected = directory_positions(inbox)
    moments = [_kill_at(scenario, KILL_MOMENTS[i % len(KILL_MOMENTS)], rng) for i in range(kills)]
    scenario.drain()
    row = scenario.score(f"kill -9 ({kind})", f"{kills} x kill -9: {', '.join(sorted(set(moments)))}", expected)
    row.notes["kill_moments"] = {m: moments.count(m) for m in sorted(set(moments))}
    return row


def broker_freeze(folder: Path, broker: Broker, seconds: float, per_task: int) -> Row:
    """SIGSTOP the broker for ``seconds`` while the daemon reads, then SIGCONT; the same run goes on."""
    topic = create_topic(broker.bootstrap, prefix="freeze")
    produce_kafka(broker.bootstrap, topic, 3, per_task)
    scenario = Scenario(folder, kafka_source_toml(broker.bootstrap, topic, f"freeze-{topic}"))
    run = scenario.start(exit_when_idle=5.0)
    _wait(lambda: scenario.consumed() >= per_task // 2, 120)
    broker.freeze()
    time.sleep(seconds)
    broker.thaw()
    thawed, before = time.monotonic(), scenario.consumed()
    _wait(lambda: scenario.consumed() > before or run.daemon.proc.poll() is not None, 180)
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
    """Checkpoint and snapshot folders on full filesystems while the daemon reads; then room again."""
    inbox = folder / "inbox"
    produce_dir(inbox, 3, per_task)
    expected = directory_positions(inbox)
    scenario = Scenario(folder)
    with tmpfs(folder / "ckpt", "8m") as ckpt, tmpfs(folder / "snap", "8m") as snap:
        fillers = [fill(ckpt), fill(snap)]
        run = scenario.start(exit_when_idle=3.0)
        _wait(lambda: scenario.consumed() >= per_task or run.daemon.proc.poll() is not None, 120)
        time.sleep(full_seconds)
        durable_before = (ckpt / "LATEST").exists()
        for filler in fillers:
            filler.unlink()
        freed = time.monotonic()
        _wait(lambda: (ckpt / "LATEST").exists() or run.daemon.proc.poll() is not None, 120)
        recovered = time.monotonic() - freed
        try:
            summary = run.wait(timeout=600)
        except (AssertionError, subprocess.TimeoutExpired):
            scenario.crashes += 1
            summary = scenario.drain()
    row = scenario.score("disk full", f"checkpoint + snapshot folders full for {full_seconds:g} s", expected,
                         [recovered])
    row.notes.update(checkpoint_failures=summary.get("checkpoint_failures"), durable_while_full=durable_before)
    return row
