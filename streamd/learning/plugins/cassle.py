"""CaSSLe (Fini et al. 2022): distil the previous task's frozen encoder+projector through a predictor.

At a task start the current encoder and projector are copied and frozen; a trainable predictor
maps the current projections onto the frozen ones, scored with the objective's own loss
(``Objective.distill_loss``), so the new model may move but must keep what the old one encoded.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import nn

from streamd.models.heads import mlp
from streamd.learning.plugins.base import Plugin, PluginOptions, register


def projection_dim(projector: nn.Module) -> int:
    """Width of a projector's output: the out_features of its last Linear layer."""
    return [m for m in projector.modules() if isinstance(m, nn.Linear)][-1].out_features


class CassleOptions(PluginOptions):
    weight: float = Field(1.0, ge=0, description="weight of the distillation term")
    predictor_hidden: int = Field(2048, ge=1, description="hidden width of the current-to-previous predictor")


@register("cassle", CassleOptions)
class CassleDistill(Plugin):
    def __init__(self, weight: float, predictor_hidden: int):
        self.weight = weight
        self.predictor_hidden = predictor_hidden
        self.frozen: nn.ModuleDict | None = None

    def setup(self, ctx):
        self.objective = ctx.objective
        d = projection_dim(ctx.objective.projector)
        self.predictor = mlp([d, self.predictor_hidden, d])

    def trainable_modules(self):
        return [self.predictor]

    def on_task_start(self, ctx, task):
        # Only once something was learnt: a stream that starts at task 3 has no previous model.
        if ctx.step_count > 0:
            self.freeze_previous()

    def frozen_modules(self) -> dict[str, nn.Module]:
        """What is copied at a task start (Kaizen adds its classifier)."""
        return {"encoder": self.objective.encoder, "projector": self.objective.projector}

    def freeze_previous(self) -> None:
        frozen = nn.ModuleDict({k: copy.deepcopy(m) for k, m in self.frozen_modules().items()})
        self.frozen = frozen.requires_grad_(False).eval()

    @torch.no_grad()
    def frozen_forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features and projections of both views, concatenated (view 1 rows first)."""
        feats = self.frozen["encoder"](torch.cat(views))
        return feats, self.frozen["projector"](feats)

    def feature_distill(self, out, frozen_projections: torch.Tensor) -> torch.Tensor:
        """Weighted objective distill loss between predicted and frozen projections, averaged over views."""
        predicted = self.predictor(torch.cat(out.projections)).chunk(2)
        frozen = frozen_projections.chunk(2)
        loss = sum(self.objective.distill_loss(p, f) for p, f in zip(predicted, frozen)) / 2
        return self.weight * loss

    def extra_loss(self, ctx, batch, out):
        if self.frozen is None:
            return {}
        _, frozen_projections = self.frozen_forward(batch.views)
        return {"cassle": self.feature_distill(out, frozen_projections)}

    def state_dict(self):
        return {"predictor": self.predictor.state_dict(),
                "frozen": None if self.frozen is None else self.frozen.state_dict()}

    def load_state_dict(self, state):
        if "predictor" in state:
            self.predictor.load_state_dict(state["predictor"])
        self.frozen = None
        if state.get("frozen") is not None:
            self.freeze_previous()  # the right module structure; the saved weights then fill it
            self.frozen.load_state_dict(state["frozen"])

    def metrics(self):
        return {"distill_teacher_present": float(self.frozen is not None)}
