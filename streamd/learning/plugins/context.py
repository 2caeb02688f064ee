"""What a plugin sees of a training step: the batch, and a narrow view of the learner.

Plugins get a ``PluginContext``, not the ``Learner``: the context names the few things a
continual-learning mechanism needs (the modules, the device, the augmentation, autocast, feature
extraction, an optimizer rebuild after it changes which parameters exist), so the learner can
change its internals without breaking a plugin, and ``streamd.learning.plugins`` never imports the learner.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ContextManager

import torch
from torch import nn

from streamd.learning.flops import backward_flops

if TYPE_CHECKING:
    from streamd.models.objectives import Objective


@dataclass
class Batch:
    images: torch.Tensor                   # uint8 (N,C,H,W): stream rows first, then replayed rows
    labels: torch.Tensor                   # int64, -1 where no label arrived
    tasks: torch.Tensor                    # int64 task id of each row
    n_stream: int                          # rows that came from the stream
    views: tuple[torch.Tensor, torch.Tensor] | None = None

    def extended(self, images, labels, tasks, views) -> "Batch":
        """This batch plus replayed rows (their views augmented by the caller)."""
        cat = torch.cat
        return replace(self, images=cat([self.images, images]), labels=cat([self.labels, labels]),
                       tasks=cat([self.tasks, tasks]),
                       views=(cat([self.views[0], views[0]]), cat([self.views[1], views[1]])))


class PluginContext:
    """The learner as plugins may use it. A live view: ``task`` and ``step_count`` follow the learner."""

    def __init__(self, learner):
        self._learner = learner

    @property
    def encoder(self) -> nn.Module:
        return self._learner.encoder

    @property
    def objective(self) -> "Objective":
        return self._learner.objective

    @property
    def device(self) -> torch.device:
        return self._learner.device

    @property
    def preprocess(self) -> nn.Module:
        """uint8 images to normalized float input (no augmentation)."""
        return self._learner.preprocess

    @property
    def task(self) -> int:
        return self._learner.task

    @property
    def step_count(self) -> int:
        return self._learner.step_count

    def views_of(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of uint8 images already on the device."""
        return self._learner.views_of(images)

    def autocast(self) -> ContextManager:
        return self._learner.autocast()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Eval-mode encoder features of uint8 images, through the mask now in use."""
        return self._learner.embed(images)

    def rebuild_optimizer(self) -> None:
        """Call after changing which parameters exist (e.g. swapping layers)."""
        self._learner.rebuild_optimizer()

    def backward_flops(self, images: torch.Tensor) -> int:
        """Backward FLOPs of one training step on ``images`` (what layer freezing saves)."""
        return backward_flops(self._learner, images)
