"""Continual-learning plugins; importing a module registers its strategy name."""
from streamd.learning.plugins.base import (PLUGINS, Plugin, PluginOptions, TaskMasks, build_plugins, register,
                                  strategy_plugins, validate_plugin_options)
from streamd.learning.plugins import cassle, exssnet, freeze, kaizen, lump, regularization, replay  # noqa: F401,E402  (registration)

__all__ = ["PLUGINS", "Plugin", "PluginOptions", "TaskMasks", "build_plugins", "register", "strategy_plugins",
           "validate_plugin_options"]
