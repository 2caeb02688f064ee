"""``streamd run``: the long-running daemon (until SIGTERM/SIGINT, or until the sources stay idle)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from streamd.config import load_config


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run the daemon", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, help="TOML file (STREAMD_* environment variables override it)")
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="stop after the sources were drained for this long and print a JSON summary")
    p.set_defaults(func=main)


def main(args) -> int:
    cfg = load_config(args.config)  # a ConfigError reaches streamd.cli.main: one line, exit 2
    logging.basicConfig(level=cfg.logging.level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from streamd.daemon import install_test_faults
    from streamd.distributed_daemon import build_daemon  # a Daemon, or one rank of several under torchrun

    install_test_faults()
    summary = build_daemon(cfg).run(exit_when_idle=args.exit_when_idle)
    print(json.dumps(summary, indent=2))
    return 0
