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
    p.add_argument("--reset", action="store_true",
                   help="start fresh: move the existing checkpoints aside (into CHECKPOINT_DIR/reset-<time>/) "
                        "instead of resuming from them")
    p.set_defaults(func=main)


def main(args) -> int:
    cfg = load_config(args.config)  # a ConfigError reaches streamd.cli.main: one line, exit 2
    logging.basicConfig(level=cfg.logging.level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from streamd.service.checkpoint import NoLoadableCheckpoint, set_aside
    from streamd.service.daemon import Daemon
    from streamd.service.distributed import Cluster
    from streamd.learning.learner import resolve_device
    from streamd.service.wiring import ensure_writable

    ensure_writable(cfg)   # a LocalIOError reaches streamd.cli.main too: one line, exit 7
    daemon = Daemon(cfg, cluster=Cluster.from_env(resolve_device(cfg.learner.device)))  # one rank of several under torchrun
    if args.reset:
        set_aside(daemon.cfg.checkpoint.dir)  # the daemon's own: under torchrun, this rank's folder
    try:
        summary = daemon.run(exit_when_idle=args.exit_when_idle)
    except NoLoadableCheckpoint as e:
        print(f"streamd: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
