"""Experience replay: every step trains on the stream batch plus a share of remembered samples."""
from __future__ import annotations

from streamd.plugins.base import Plugin, register
from streamd.replay_buffer import ReservoirBuffer


@register("replay")
class ReplayPlugin(Plugin):
    def __init__(self, capacity: int = 512, replay_ratio: float = 0.5, balance: str = "task", seed: int = 0):
        self.buffer = ReservoirBuffer(capacity, balance, seed)
        self.replay_ratio = replay_ratio

    def before_step(self, ctx, batch):
        n = int(round(batch.n_stream * self.replay_ratio))
        if len(self.buffer) == 0 or n == 0:
            return batch
        images, labels, tasks = self.buffer.sample(n, ctx.device)
        return batch.extended(images, labels, tasks, ctx.views_of(images))

    def after_step(self, ctx, batch, out):
        n = batch.n_stream
        self.buffer.add(batch.images[:n], batch.labels[:n], batch.tasks[:n])

    def state_dict(self):
        return {"buffer": self.buffer.to_arrow()}

    def load_state_dict(self, state):
        if "buffer" in state:
            self.buffer = ReservoirBuffer.from_arrow(state["buffer"])

    def metrics(self):
        return {"replay_buffer_size": float(len(self.buffer))}
