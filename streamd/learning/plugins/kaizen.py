"""Kaizen (Tang et al. 2024): CaSSLe feature distillation + a classifier kept alive across tasks.

On top of CaSSLe (inherited), a linear classifier on DETACHED encoder features learns from the
rows that carry a label (label -1 = none, so any fraction of labels works, none included) and is
distilled from the frozen previous classifier (cross-entropy to its softmax on the frozen
features). A small share of each finished task (``memory_share`` of its stream rows, drawn
uniformly from a bounded per-task reservoir) is kept in a task-balanced memory and replayed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from streamd.learning.plugins.base import register
from streamd.learning.plugins.cassle import CassleDistill, CassleOptions
from streamd.learning.plugins.replay import ReplayPlugin
from streamd.learning.replay_buffer import ReservoirBuffer


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over rows with label >= 0; exactly 0 (no NaN, no host sync) when none is labelled."""
    labelled = labels >= 0
    per_row = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return torch.where(labelled, per_row, 0.0).sum() / labelled.sum().clamp(min=1)


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    return -(teacher_logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


class KaizenOptions(CassleOptions):
    num_classes: int = Field(10, ge=1, description="classifier outputs (labels outside 0..num_classes-1 fail)")
    ce_weight: float = Field(1.0, ge=0, description="cross-entropy on labelled rows")
    classifier_distill_weight: float = Field(2.0, ge=0, description="distillation from the previous classifier")
    memory_share: float = Field(0.01, gt=0, le=1, description="share of a finished task's rows kept for replay")
    task_reservoir: int = Field(512, ge=1, description="reservoir of the current task the share is drawn from")
    memory_capacity: int = Field(1024, ge=1)
    replay_ratio: float = Field(0.25, ge=0)
    seed: int = 0


@register("kaizen", KaizenOptions)
class KaizenPlugin(CassleDistill):
    def __init__(self, weight: float, predictor_hidden: int, num_classes: int, ce_weight: float,
                 classifier_distill_weight: float, memory_share: float, task_reservoir: int, memory_capacity: int,
                 replay_ratio: float, seed: int):
        super().__init__(weight, predictor_hidden)
        self.num_classes = num_classes
        self.ce_weight, self.classifier_distill_weight = ce_weight, classifier_distill_weight
        self.memory_share = memory_share
        self.task_reservoir, self.seed = task_reservoir, seed
        # Replay of earlier tasks only: the memory is filled at task ends, never with the current task.
        self.memory = ReplayPlugin(memory_capacity, replay_ratio, balance="task", seed=seed)
        self.task_sample = ReservoirBuffer(task_reservoir, "none", seed)

    def setup(self, ctx):
        super().setup(ctx)
        self.classifier = nn.Linear(ctx.encoder.feature_dim, self.num_classes)

    def trainable_modules(self):
        return super().trainable_modules() + [self.classifier]

    def frozen_modules(self):
        return {**super().frozen_modules(), "classifier": self.classifier}

    def on_task_end(self, ctx, task):
        """Moves ``memory_share`` of the finished task's stream rows into the replay memory."""
        sample = self.task_sample
        k = min(len(sample), math.ceil(self.memory_share * sample.seen))
        if k:
            idx = torch.from_numpy(sample.rng.choice(len(sample), size=k, replace=False))
            self.memory.buffer.add(sample.images[idx], sample.labels[idx], sample.tasks[idx])
        self.task_sample = ReservoirBuffer(self.task_reservoir, "none", self.seed + task + 1)

    def before_step(self, ctx, batch):
        return self.memory.before_step(ctx, batch)

    def after_step(self, ctx, batch, out):
        n = batch.n_stream
        self.task_sample.add(batch.images[:n], batch.labels[:n], batch.tasks[:n])

    def extra_loss(self, ctx, batch, out):
        logits = self.classifier(torch.cat(out.feats).detach())
        terms = {"kaizen_ce": self.ce_weight * labelled_cross_entropy(logits, batch.labels.repeat(2))}
        if self.frozen is not None:
            frozen_feats, frozen_projections = self.frozen_forward(batch.views)
            with torch.no_grad():
                teacher_logits = self.frozen["classifier"](frozen_feats)
            terms["cassle"] = self.feature_distill(out, frozen_projections)
            terms["kaizen_classifier_distill"] = self.classifier_distill_weight * soft_cross_entropy(logits, teacher_logits)
        return terms

    def state_dict(self):
        return {**super().state_dict(), "classifier": self.classifier.state_dict(),
                "memory": self.memory.state_dict(), "task_sample": self.task_sample.to_arrow()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "classifier" in state:
            self.classifier.load_state_dict(state["classifier"])
            self.memory.load_state_dict(state["memory"])
            self.task_sample = ReservoirBuffer.from_arrow(state["task_sample"])

    def metrics(self):
        return {**super().metrics(), **self.memory.metrics()}
