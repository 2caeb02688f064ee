"""Two data-parallel ranks launched by torchrun (gloo, CPU) against the real test broker.

Checks the scale-out contract of docs/scaling.md: every record is trained on by exactly one rank,
both ranks hold identical weights after every step, and a restart resumes both ranks from the
checkpoint (same weights, no record read again).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from streamd.connectors.base import CONTENT_TYPE_HEADER
from streamd.connectors.wire import encode_image, image_headers, kafka_headers
from streamd.service.checkpoint import load_checkpoint, step_of
from streamd.service.distributed import merge_positions
from conftest import FAST_CLIENT, create_topic, free_port

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 2
IMAGE = 16


def produce(bootstrap: str, topic: str, tasks: list[int], per_task: int, partitions: int = PARTITIONS) -> set[str]:
    """Raw images with task headers, spread evenly over the first ``partitions``; returns their positions."""
    rng = np.random.default_rng(sum(tasks))
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    futures = []
    for task in tasks:
        for i in range(per_task):
            pixels = rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8) // (task + 1)
            payload, content_type, extra = encode_image(pixels, "raw")
            headers = {CONTENT_TYPE_HEADER: content_type, **extra, **image_headers(task, i % 4)}
            futures.append(producer.send(topic, payload, headers=kafka_headers(headers), partition=i % partitions))
    positions = {f"{m.topic}:{m.partition}@{m.offset}" for m in (f.get(timeout=30) for f in futures)}
    producer.close()
    return positions


LUMP = '''
[strategy]
name = "lump"
'''
# Two short ExSSNeT phases per task: a rank that skipped the step tail would change phase later
# than the other, and its optimizer (the learning tensors) would no longer match in the all-reduce.
EXSSNET = '''
[strategy]
name = "exssnet"
plugin_options.exssnet = { score_steps = 2, select_batches = 1, density = 0.5 }
'''


def write_config(tmp_path: Path, bootstrap: str, topic: str, strategy: str = LUMP) -> Path:
    client = ", ".join(f"{k} = {v}" for k, v in FAST_CLIENT.items())
    path = tmp_path / "streamd.toml"
    path.write_text(f"""
audit_log = "{tmp_path / 'audit.log'}"

[source]
kind = "kafka"

[source.kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
group_id = "{topic}"   # a group of its own: a group reused for another topic rebalanced forever on tansu
max_poll_records = 16
client_options = {{ {client} }}

[dead_letter]
kind = "none"

[model]
arch = "resnet_tiny"
image_size = {IMAGE}
objective = "byol"   # a momentum target: it must stay in sync too
objective_kwargs = {{ proj_hidden = 64, proj_dim = 32, pred_hidden = 16 }}
{strategy}
[learner]
device = "cpu"
batch_size = 8
max_wait_seconds = 0.5

[boundary]
mode = "header"

[checkpoint]
dir = "{tmp_path / 'checkpoints'}"
every_steps = 3
every_seconds = 0

[snapshots]
dir = "{tmp_path / 'snapshots'}"
every_seconds = 0

[probe]
per_task = 4

[api]
port = 0
""")
    return path


def torchrun(config: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "streamd", "run", "--config", str(config),
           "--exit-when-idle", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with log.open("w") as f:   # kept in tmp_path for a failure's post-mortem
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=240).returncode
    assert rc == 0, log.read_text()[-6000:]


def audit(tmp_path: Path, rank: int, run: int) -> list[list[str]]:
    """The audit lines of one rank's ``run``-th start (1-based)."""
    lines = [ln.split("\t") for ln in (tmp_path / f"audit.rank{rank}.log").read_text().splitlines()]
    starts = [i for i, ln in enumerate(lines) if ln[0] == "start"] + [len(lines)]
    return lines[starts[run - 1]:starts[run]]


def trained(lines: list[list[str]]) -> list[str]:
    return [ln[1] for ln in lines if ln[0] in ("trained", "held_out")]   # consumed by this rank


def weights(lines: list[list[str]], kind: str = "weights") -> dict[int, str]:
    return {int(ln[1]): ln[2] for ln in lines if ln[0] == kind}


def check_run(tmp_path: Path, run: int, expected: set[str]) -> tuple[dict[int, str], list[list[str]]]:
    runs = [audit(tmp_path, rank, run) for rank in (0, 1)]
    by_rank = [trained(lines) for lines in runs]
    # every record of this run trained by exactly one rank, each rank on its own partitions
    assert sorted(by_rank[0] + by_rank[1]) == sorted(expected)
    partitions = [{p.split("@")[0] for p in positions} for positions in by_rank]
    assert all(partitions) and not partitions[0] & partitions[1]
    # identical weights after every step, and every step taken by both ranks
    steps = [weights(lines) for lines in runs]
    assert steps[0] and steps[0] == steps[1]
    assert list(steps[0]) == list(range(min(steps[0]), max(steps[0]) + 1))
    return steps[0], runs


def test_two_ranks_train_one_model_on_disjoint_partitions_and_resume(kafka_broker, tmp_path):
    topic = create_topic(kafka_broker, partitions=PARTITIONS, prefix="ranks")
    first = produce(kafka_broker, topic, tasks=[0, 1], per_task=24)
    config = write_config(tmp_path, kafka_broker, topic)

    torchrun(config, tmp_path / "torchrun-1.log")
    steps1, runs1 = check_run(tmp_path, 1, first)
    assert min(steps1) == 1
    ends = {f"{topic}:{p}": len(first) // PARTITIONS for p in range(PARTITIONS)}
    for rank in (0, 1):   # one checkpoint per rank, same step, holding every rank's partitions
        folder = tmp_path / "checkpoints" / f"rank-{rank:03d}"
        assert step_of((folder / "LATEST").read_text().strip()) == max(steps1)
        assert load_checkpoint(folder)["positions"]["offsets"] == ends
    assert (tmp_path / "torchrun-1.log").read_text().count("HTTP API on") == 1   # rank 0 only
    assert sorted(p.name for p in (tmp_path / "snapshots").glob("v*"))   # rank 0 published

    second = produce(kafka_broker, topic, tasks=[2], per_task=16)
    torchrun(config, tmp_path / "torchrun-2.log")
    steps2, runs2 = check_run(tmp_path, 2, second)   # nothing of the first run read again
    restored = [weights(lines, "restored") for lines in runs2]
    assert restored[0] == restored[1] == {max(steps1): steps1[max(steps1)]}   # resumed the final weights
    assert min(steps2) == max(steps1) + 1


def test_a_rank_without_data_runs_the_same_step_tail_so_step_counted_plugin_state_agrees(kafka_broker, tmp_path):
    """All records on one partition: one rank trains, the other only joins each step with weight 0.
    ExSSNeT counts its phases in steps and resets weights after each step; the idle rank must do
    both too, or the ranks' optimizers and weights part ways."""
    topic = create_topic(kafka_broker, partitions=PARTITIONS, prefix="idle-rank")
    records = produce(kafka_broker, topic, tasks=[0, 1], per_task=32, partitions=1)
    torchrun(write_config(tmp_path, kafka_broker, topic, EXSSNET), tmp_path / "torchrun.log")
    runs = [audit(tmp_path, rank, 1) for rank in (0, 1)]
    by_rank = sorted((trained(lines) for lines in runs), key=len)
    assert by_rank[0] == [] and sorted(by_rank[1]) == sorted(records)   # one rank had no data at all
    steps = [weights(lines) for lines in runs]
    assert len(steps[0]) >= 6 and steps[0] == steps[1]   # identical weights after every step
    plugin_states = [load_checkpoint(tmp_path / "checkpoints" / f"rank-{rank:03d}")["learner"]["plugins"]["exssnet"]
                     for rank in (0, 1)]
    # (Boundaries are rank 0's: if rank 0 is the idle one, the whole stream stays task 0.)
    phases = [(s["slot"], s["phase"], s["steps_in_phase"]) for s in plugin_states]
    assert phases[0] == phases[1] and phases[0][1] == "weights" and phases[0][2] >= 1, phases


def test_merge_positions_keeps_the_newest_offset_of_each_partition():
    live = {"offsets": {"t:0": 7, "t:1": 3}, "partial": {"t:1": {"3": [0]}}}
    stale = {"offsets": {"t:1": 2, "t:2": 5}, "partial": {"t:2": {"5": [1]}}}
    assert merge_positions([stale, live]) == merge_positions([live, stale]) == {
        "offsets": {"t:0": 7, "t:1": 3, "t:2": 5}, "partial": {"t:1": {"3": [0]}, "t:2": {"5": [1]}}}
