"""``streamd bench <name>``: benchmarks, one module each in streamd/bench/ (discovered like commands)."""
from __future__ import annotations

import importlib
import pkgutil

import streamd.bench


def register(subparsers) -> None:
    # Imported before any parser is added: without the daemon's dependencies the whole command is
    # refused (streamd.cli), not left half registered.
    benches = [importlib.import_module(f"streamd.bench.{mod.name}")
               for mod in sorted(pkgutil.iter_modules(streamd.bench.__path__), key=lambda m: m.name)
               if not mod.name.startswith("_")]
    parser = subparsers.add_parser("bench", help="run a benchmark (continual learning, throughput, ...)")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for bench in benches:
        bench.register(sub)
