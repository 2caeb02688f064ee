"""Benchmarks of the ``streamd bench`` command: one module each, exposing ``register(subparsers)``
(discovered by streamd.commands.bench). Modules whose name starts with ``_`` are shared helpers."""
