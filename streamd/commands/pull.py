"""``streamd pull SOURCE --version latest --out DIR``: fetch one snapshot and verify its sha256.

Failures (not found, sha256 mismatch, refused token, unreachable server, unwritable --out) are
``streamd.errors`` exceptions raised by ``streamd.client``: one line on stderr, a documented exit code."""
from __future__ import annotations

import os

from streamd.client import TOKEN_ENV, pull


def run(args) -> int:
    folder = pull(args.source, args.version, args.out, token=args.token, timeout=args.timeout,
                  cache_dir=False if args.no_cache else True)
    print(f"pulled {args.source} {args.version} into {folder}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pull", help="download a verified snapshot from a daemon URL or a snapshot folder")
    p.add_argument("source", help="http(s)://HOST:PORT of a daemon, a snapshot root or one snapshot folder")
    p.add_argument("--version", default="latest", help="vNNNNNN or an alias (latest, stable, ...)")
    p.add_argument("--out", required=True, help="folder to write model.safetensors, config.json, manifest.json")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up on a server that does not connect or answer within this (default 60)")
    p.add_argument("--no-cache", action="store_true",
                   help="download every file again (default: files already pulled, by sha256, are copied from "
                        "$STREAMD_CACHE_DIR or ~/.cache/streamd)")
    p.set_defaults(func=run)
