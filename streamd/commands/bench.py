"""``streamd bench <name>``: benchmarks, one module each in streamd/bench/ (discovered like commands)."""
from __future__ import annotations

import importlib
import pkgutil

import streamd.bench


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (continual learning, throughput, ...)")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for mod in sorted(pkgutil.iter_modules(streamd.bench.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"streamd.bench.{mod.name}").register(sub)
