"""LUMP (Madaan et al. 2022): mixup of the current views with replayed views, lambda ~ Beta(a, a)."""
from __future__ import annotations

import torch

from streamd.plugins.base import register
from streamd.plugins.replay import ReplayPlugin


@register("lump")
class LumpPlugin(ReplayPlugin):
    """Reuses the replay plugin's buffer and persistence; only what it does with samples differs."""

    def __init__(self, capacity: int = 256, alpha: float = 0.4, balance: str = "none", seed: int = 0):
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
