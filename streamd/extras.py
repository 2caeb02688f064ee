"""Imports of the optional ``bench`` extra (plots, the bundled MNIST digits).

The container image installs streamd without it (the daemon never plots or loads demo data), so a
command that needs it says what to install instead of failing with a bare ImportError.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from streamd.errors import UsageError


def import_extra(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"{purpose} needs {module.split('.')[0]}, which streamd's 'bench' extra installs: "
                         "pip install 'streamd[bench]'") from e
