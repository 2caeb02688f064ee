"""``streamd config show``: the effective configuration (defaults < TOML < environment), secrets masked."""
from __future__ import annotations

import json
from pathlib import Path

from streamd.config import load_config, masked_dict, to_toml


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="inspect the configuration", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="config_command", required=True)
    show = sub.add_parser("show", help="print the effective configuration (secrets masked)")
    show.add_argument("--config", type=Path, default=None, help="TOML file (STREAMD_* environment overrides it)")
    show.add_argument("--format", choices=["toml", "json"], default="toml")
    show.set_defaults(func=show_config)


def show_config(args) -> int:
    cfg = load_config(args.config)  # a ConfigError reaches streamd.cli.main: one line, exit 2
    print(to_toml(cfg) if args.format == "toml" else json.dumps(masked_dict(cfg), indent=2))
    return 0
