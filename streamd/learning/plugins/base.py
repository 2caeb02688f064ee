"""The plugin interface: each continual-learning mechanism is one small class with a few hooks.

Hooks run in the order the strategy names the plugins ("replay+lump" = replay first).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from streamd.models.registry import Registry

if TYPE_CHECKING:
    from streamd.models.objectives import ObjectiveOutput
    from streamd.learning.plugins.context import Batch, PluginContext


class PluginOptions(BaseModel):
    """A plugin's options (``[strategy.plugin_options.NAME]``): typed and bounded; unknown keys fail.
    The constructor takes exactly these fields, so the defaults live here only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    name: str = "plugin"
    options: type[PluginOptions] = PluginOptions

    def setup(self, ctx: "PluginContext") -> None:
        """Once, before the optimizer is built: create modules here so their params are optimized."""

    def trainable_modules(self) -> list[nn.Module]:
        return []

    def on_task_start(self, ctx: "PluginContext", task: int) -> None: ...

    def on_task_end(self, ctx: "PluginContext", task: int) -> None: ...

    def before_step(self, ctx: "PluginContext", batch: "Batch") -> "Batch":
        """Add replayed rows or mix views; ``batch.views`` already holds the augmented views."""
        return batch

    def extra_loss(self, ctx: "PluginContext", batch: "Batch", out: "ObjectiveOutput") -> dict[str, torch.Tensor]:
        """Named loss terms added to the SSL loss (distillation, regularization, ...)."""
        return {}

    def after_step(self, ctx: "PluginContext", batch: "Batch", out: "ObjectiveOutput | None") -> None:
        """After the optimizer step. On a data-parallel rank without rows of its own the batch is
        empty and ``out`` is None: the hook still runs, so step-counted state agrees across ranks."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Before the learner's weights load: rebuild the modules the saved weights then fill."""

    def after_restore(self, ctx: "PluginContext") -> None:
        """After the whole learner state (weights, optimizer, frozen prefix) is back."""

    def metrics(self) -> dict[str, float]:
        """Gauges worth exporting (buffer size, frozen blocks, ...)."""
        return {}


class TaskMasks(Plugin):
    """A plugin that keeps one mask per task (ExSSNeT): ``Learner.embed(images, task=t)`` sees a
    task through its own mask, and a batch of unknown task is routed by ``infer_task``."""

    def use_task(self, ctx: "PluginContext", task: int) -> None:
        """Switch the encoder to ``task``'s mask until the next training step."""
        raise NotImplementedError

    def infer_task(self, ctx: "PluginContext", images: torch.Tensor) -> int:
        """The known task a batch of images most likely comes from."""
        raise NotImplementedError


PLUGINS = Registry("plugin")


def register(name: str, options: type[PluginOptions] = PluginOptions):
    """Registers a plugin class under its strategy name, with the model of its options."""
    def deco(cls):
        cls.options = options
        return PLUGINS.register(name)(cls)
    return deco


def strategy_plugins(strategy: str) -> list[str]:
    """"finetune" -> []; "cassle+replay" -> ["cassle", "replay"]; raises ValueError on an unknown part."""
    names = [n for n in strategy.split("+") if n and n != "finetune"]
    unknown = [n for n in names if n not in PLUGINS]
    if unknown:
        raise ValueError(f"unknown strategy part(s) {unknown}; allowed: finetune, {', '.join(sorted(PLUGINS))} "
                         "(joined with '+')")
    return names


def validate_plugin_options(strategy: str, options: dict[str, dict] | None) -> dict[str, PluginOptions]:
    """Each plugin's typed options. Raises ValueError, naming what is allowed, for options of a plugin
    the strategy does not use, unknown keys and bad values: none is silently dropped."""
    names, options = strategy_plugins(strategy), options or {}
    stray = sorted(set(options) - set(names))
    if stray:
        raise ValueError(f"plugin_options for {', '.join(stray)}, which strategy {strategy!r} does not use "
                         f"(its plugins: {', '.join(names) or 'none'})")
    typed = {}
    for name in names:
        model = PLUGINS[name].options
        try:
            typed[name] = model.model_validate(options.get(name, {}))
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{name} options: {problems} (allowed: {', '.join(model.model_fields) or 'none'})") \
                from None
    return typed


def build_plugins(strategy: str, options: dict[str, dict] | None = None) -> list[Plugin]:
    """"cassle+replay" -> [CaSSLe, Replay], each built from its validated ``options[name]``."""
    typed = validate_plugin_options(strategy, options)
    return [PLUGINS[name](**typed[name].model_dump()) for name in strategy_plugins(strategy)]
