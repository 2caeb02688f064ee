"""One registry style for everything configuration picks by name: encoder archs, SSL objectives
and continual-learning plugins. A class joins where it is defined (``@REGISTRY.register("name")``),
and an unknown name fails with the allowed ones, in the same words everywhere."""
from __future__ import annotations


class Registry(dict):
    """Name -> class. A plain dict to read (``sorted(r)``, ``name in r``), filled by ``register``."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, *names: str):
        """Class decorator: the class is built for each of ``names``; with one name it is also ``cls.name``."""
        def deco(cls):
            for name in names:
                self[name] = cls
            if len(names) == 1:
                cls.name = names[0]
            return cls
        return deco

    def lookup(self, name: str):
        """The class registered as ``name``; a ValueError naming the allowed names otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self))}")
        return self[name]
