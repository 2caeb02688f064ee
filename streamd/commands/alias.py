"""``streamd alias list|promote|rollback SOURCE``: the named pointers downstream jobs follow.

SOURCE is a daemon's URL (alias moves need its API token; the daemon audits them) or the snapshot
folder itself (for an operator on the volume; the move is audited with the local user name). A
rollback returns the alias to the version it named before its last move."""
from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

from streamd.client import TOKEN_ENV, call_api
from streamd.errors import NotFoundError
from streamd.service import aliases


def run(args) -> int:
    remote = str(args.source).startswith(("http://", "https://"))
    if remote:
        result = _remote(args)
    else:
        root = Path(args.source)
        if not root.is_dir():
            raise NotFoundError(f"no snapshot folder {root}")
        actor = f"cli:{getpass.getuser()}"
        result = {"list": lambda: {"aliases": aliases.list_aliases(root)},
                  "promote": lambda: aliases.promote(root, args.alias, args.version, actor),
                  "rollback": lambda: aliases.rollback(root, args.alias, actor)}[args.action]()
    print(json.dumps(result, indent=2))
    return 0


def _remote(args) -> dict:
    if args.action == "list":
        return call_api(args.source, "GET", "/v1/aliases", args.token, args.timeout)
    if args.action == "promote":
        return call_api(args.source, "POST", f"/v1/aliases/{args.alias}", args.token, args.timeout,
                        body={"version": args.version})
    return call_api(args.source, "POST", f"/v1/aliases/{args.alias}/rollback", args.token, args.timeout)


def register(subparsers) -> None:
    p = subparsers.add_parser("alias", help="list, promote or roll back snapshot aliases (latest, stable, ...)",
                              description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="action", required=True)
    for name, text in [("list", "every alias and its version"), ("promote", "point ALIAS at VERSION"),
                       ("rollback", "point ALIAS back where it was before its last move")]:
        a = actions.add_parser(name, help=text)
        a.add_argument("source", help="http(s)://HOST:PORT of a daemon, or a snapshot root folder")
        if name != "list":
            a.add_argument("alias", help="the alias, e.g. stable")
        if name == "promote":
            a.add_argument("version", help="vNNNNNN, or another alias to copy (e.g. latest)")
        a.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (default: ${TOKEN_ENV})")
        a.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.set_defaults(func=run)
