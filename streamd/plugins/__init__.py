"""Continual-learning plugins; importing a module registers its strategy name."""
from streamd.plugins.base import (PLUGINS, Plugin, PluginOptions, TaskMasks, build_plugins, register,
                                  strategy_plugins, validate_plugin_options)
from streamd.plugins import cassle, exssnet, freeze, kaizen, lump, regularization, replay  # noqa: F401,E402  (registration)

__all__ = ["PLUGINS", "Plugin", "PluginOptions", "TaskMasks", "build_plugins", "register", "strategy_plugins",
           "validate_plugin_options"]
