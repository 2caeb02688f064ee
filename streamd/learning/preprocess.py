"""The evaluation path from uint8 images to the encoder's input: torch only, so the pull client
(and a machine without the daemon's dependencies) can feed a snapshot exactly as training did."""
from __future__ import annotations

import torch
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class Preprocess(nn.Module):
    """Evaluation path: uint8 -> normalized float, no randomness (also what snapshots record)."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div(255) - self.mean) / self.std
