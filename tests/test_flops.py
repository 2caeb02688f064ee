"""Backward FLOP accounting: what the freezing benchmark and the replay cost are measured with."""
from __future__ import annotations

from cl_fixtures import images, one_torch_thread, tiny_learner  # noqa: F401  (fixture)
from streamd.learning.flops import backward_flops


def test_replayed_rows_are_counted():
    finetune, replay = tiny_learner("finetune"), tiny_learner("replay", replay={"replay_ratio": 0.5})
    batch = images(8)
    for learner in (finetune, replay):
        learner.step(batch)
        learner.step(batch)   # the buffer is filled after the first step: this one replays 4 rows
    assert replay.last_batch_rows == 12 and finetune.last_batch_rows == 8
    assert backward_flops(replay, batch) == backward_flops(finetune, batch) * 12 // 8
