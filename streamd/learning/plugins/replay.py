"""Experience replay: every step trains on the stream batch plus a share of remembered samples."""
from __future__ import annotations

from pydantic import Field

from streamd.learning.plugins.base import Plugin, PluginOptions, register
from streamd.learning.replay_buffer import Balance, ReservoirBuffer


class ReplayOptions(PluginOptions):
    capacity: int = Field(512, ge=1, description="images remembered")
    replay_ratio: float = Field(0.5, ge=0, description="replayed rows per stream row in each step")
    balance: Balance = Field("task", description="reservoir balanced over tasks, classes, or not at all")
    seed: int = 0


@register("replay", ReplayOptions)
class ReplayPlugin(Plugin):
    def __init__(self, capacity: int, replay_ratio: float, balance: Balance, seed: int):
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
