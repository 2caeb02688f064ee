"""The ``streamd`` command. Each sub-command lives in ``streamd/commands/<name>.py`` and exposes
``register(subparsers)``; this file only discovers and dispatches them, and turns an expected
failure (``streamd.errors.UserFacingError``) into one line on stderr and its exit code."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import streamd.commands
from streamd.errors import EXIT_CODES, UsageError, UserFacingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamd", description="Continual self-supervised representation learning from a live image stream.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES))
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in sorted(pkgutil.iter_modules(streamd.commands.__path__), key=lambda m: m.name):
        try:
            importlib.import_module(f"streamd.commands.{mod.name}").register(sub)
        except ModuleNotFoundError as e:
            if (e.name or "streamd").split(".")[0] == "streamd":
                raise   # a bug in streamd itself, not a missing optional install
            _needs_extra(sub, mod.name, e.name)
    return parser


def _needs_extra(sub, command: str, missing: str) -> None:
    """A client-only install (``pip install streamd``) lacks the daemon's dependencies: the command
    stays listed and says what to install instead of breaking the whole CLI."""
    def refuse(args) -> int:
        raise UsageError(f"streamd {command} needs the daemon's dependencies ({missing} is not installed): "
                         "pip install 'streamd[daemon]'")

    p = sub.add_parser(command, help=f"(needs streamd[daemon]: {missing} is not installed)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=refuse)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserFacingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        print(f"streamd: {'; '.join(lines)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
