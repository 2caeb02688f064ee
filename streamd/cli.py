"""The ``streamd`` command. Each sub-command lives in ``streamd/commands/<name>.py`` and exposes
``register(subparsers)``; this file only discovers and dispatches them."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import streamd.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamd", description="Continual self-supervised representation learning from a live image stream.")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in sorted(pkgutil.iter_modules(streamd.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"streamd.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
