"""Continual-learning plugins; importing a module registers its strategy name."""
from streamd.plugins.base import PLUGINS, Plugin, TaskMasks, build_plugins, register
from streamd.plugins import cassle, exssnet, freeze, kaizen, lump, regularization, replay  # noqa: F401,E402  (registration)

__all__ = ["PLUGINS", "Plugin", "TaskMasks", "build_plugins", "register"]
