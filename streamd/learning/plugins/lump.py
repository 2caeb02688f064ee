"""LUMP (Madaan et al. 2022): mixup of the current views with replayed views, lambda ~ Beta(a, a)."""
from __future__ import annotations

import torch
from pydantic import Field

from streamd.learning.plugins.base import PluginOptions, register
from streamd.learning.plugins.replay import ReplayPlugin
from streamd.learning.replay_buffer import Balance


class LumpOptions(PluginOptions):
    capacity: int = Field(256, ge=1, description="images remembered for mixing")
    alpha: float = Field(0.4, gt=0, description="mixup coefficient ~ Beta(alpha, alpha)")
    balance: Balance = "none"
    seed: int = 0


@register("lump", LumpOptions)
class LumpPlugin(ReplayPlugin):
    """Reuses the replay plugin's buffer and persistence; only what it does with samples differs."""

    def __init__(self, capacity: int, alpha: float, balance: Balance, seed: int):
        super().__init__(capacity=capacity, replay_ratio=0.0, balance=balance, seed=seed)
        self.beta = torch.distributions.Beta(alpha, alpha)

    def before_step(self, ctx, batch):
        if len(self.buffer) == 0:
            return batch
        images, _, _ = self.buffer.sample(batch.views[0].shape[0], ctx.device)
        b1, b2 = ctx.views_of(images)
        lam = float(self.beta.sample())
        v1, v2 = batch.views
        batch.views = (lam * v1 + (1 - lam) * b1, lam * v2 + (1 - lam) * b2)
        return batch
