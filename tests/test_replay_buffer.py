"""The replay memory: unbiased reservoir, class balance, and a lossless Arrow round trip."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from scipy.stats import chi2

from streamd.learning.replay_buffer import ReservoirBuffer

CAPACITY, STREAM, RUNS = 8, 40, 1500


def reservoir_keeps(seed: int) -> list[int]:
    """Stream ids 0..STREAM-1 (in batches of 5, as the learner adds them) kept by a seeded reservoir."""
    buf = ReservoirBuffer(CAPACITY, seed=seed)
    ids = torch.arange(STREAM)
    for chunk in ids.split(5):
        buf.add(chunk.view(-1, 1, 1, 1).to(torch.uint8), chunk, torch.zeros_like(chunk))
    return buf.images[: len(buf)].flatten().tolist()


def keep_first(seed: int) -> list[int]:
    return list(range(CAPACITY))


def keep_last(seed: int) -> list[int]:
    return list(range(STREAM - CAPACITY, STREAM))


def keep_mostly_recent(seed: int) -> list[int]:
    """A subtler bias: a sliding window of the last 2*CAPACITY samples, sampled uniformly."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.arange(STREAM - 2 * CAPACITY, STREAM), CAPACITY, replace=False).tolist()


def uniform_inclusion_p_value(keeps) -> float:
    """Chi-square test that every stream position is kept equally often over many seeded runs."""
    counts = np.zeros(STREAM)
    for seed in range(RUNS):
        kept = keeps(seed)
        assert len(kept) == CAPACITY and len(set(kept)) == CAPACITY
        counts[kept] += 1
    expected = RUNS * CAPACITY / STREAM
    return float(chi2.sf(((counts - expected) ** 2 / expected).sum(), df=STREAM - 1))


def test_reservoir_gives_every_seen_sample_the_same_inclusion_probability():
    assert uniform_inclusion_p_value(reservoir_keeps) > 1e-3


def test_the_inclusion_test_rejects_biased_buffers():
    for biased in (keep_first, keep_last, keep_mostly_recent):
        assert uniform_inclusion_p_value(biased) < 1e-3, biased.__name__


def test_class_balanced_buffer_gives_each_class_an_equal_share():
    buf = ReservoirBuffer(30, balance="class", seed=0)
    labels = torch.cat([torch.zeros(600), torch.ones(60), torch.full((60,), 2)]).long()
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    buf.add(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, torch.zeros_like(labels))
    assert torch.bincount(buf.labels[: len(buf)]).tolist() == [10, 10, 10]
    plain = ReservoirBuffer(30, seed=0)
    plain.add(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, torch.zeros_like(labels))
    assert torch.bincount(plain.labels[: len(plain)], minlength=3)[0] > 15   # what balancing corrects


def test_arrow_round_trip_keeps_images_labels_and_sampling_state():
    gen = torch.Generator().manual_seed(0)
    buf = ReservoirBuffer(16, balance="task", seed=3)
    buf.add(torch.randint(0, 256, (40, 3, 5, 4), dtype=torch.uint8, generator=gen),
            torch.randint(0, 10, (40,), generator=gen), torch.arange(40) // 20)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, buf.to_arrow().schema) as writer:
        writer.write_table(buf.to_arrow())
    restored = ReservoirBuffer.from_arrow(pa.ipc.open_file(sink.getvalue()).read_all())
    assert restored.images.dtype == torch.uint8
    assert (len(restored), restored.seen, restored.balance) == (len(buf), buf.seen, buf.balance)
    n = len(buf)
    for name in ("images", "labels", "tasks"):
        assert torch.equal(getattr(restored, name)[:n], getattr(buf, name)[:n]), name
    for a, b in zip(restored.sample(8), buf.sample(8)):
        assert torch.equal(a, b)


def test_empty_buffer_round_trips():
    restored = ReservoirBuffer.from_arrow(ReservoirBuffer(4).to_arrow())
    assert len(restored) == 0 and restored.capacity == 4
