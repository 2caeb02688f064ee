"""The plumbing every SSL objective shares: encoder, projector, two views, optional EMA target."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from streamd.models.encoders import Encoder
from streamd.models.registry import Registry

OBJECTIVES = Registry("objective")


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    feats: tuple[torch.Tensor, torch.Tensor]        # encoder features of view 1 and view 2
    projections: tuple[torch.Tensor, torch.Tensor]  # projector outputs (what CaSSLe distils)


class Objective(nn.Module):
    """Subclasses build ``self.projector`` and implement ``loss`` and ``distill_loss``."""

    name: str = "base"

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return self.projector(feats)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> ObjectiveOutput:
        f1, f2 = self.encoder(torch.cat([v1, v2])).chunk(2)
        z1, z2 = self.project(torch.cat([f1, f2])).chunk(2)
        return ObjectiveOutput(self.loss(z1, z2, v1, v2), (f1, f2), (z1, z2))

    def loss(self, z1, z2, v1, v2) -> torch.Tensor:
        raise NotImplementedError

    def distill_loss(self, predicted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        """CaSSLe: the objective's own loss between predicted and frozen previous projections."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Hook for momentum targets."""


class MomentumObjective(Objective):
    """BYOL / MoCo v3: an EMA copy of encoder+projector gives the targets."""

    def __init__(self, encoder: Encoder, tau: float = 0.99):
        super().__init__(encoder)
        self.tau = tau

    def build_target(self) -> None:
        """Called after the projector exists, and again whenever the encoder is rebuilt."""
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    @torch.no_grad()
    def targets(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.target_projector(self.target_encoder(torch.cat([v1, v2])))
        return t.chunk(2)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.lerp_(po.detach(), 1 - self.tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)
