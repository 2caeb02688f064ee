"""Named aliases of snapshot versions, moved by operators, with an audit trail.

``latest`` is the alias the daemon moves itself, to each snapshot that passes the publish gate;
others (``stable``, ``prod``) move only when an operator promotes a version or rolls the alias back.
Each alias is a pointer file in the snapshot root, replaced atomically and durably like ``latest``;
every move, the daemon's included, is one line of ``aliases.log`` (streamd.service.alias_log), which
is also what a rollback reads: it returns the alias to the version it named before its last move.
Retention never prunes a version an alias names.
"""
from __future__ import annotations

from pathlib import Path

from streamd.errors import NotFoundError, UsageError
from streamd.service.alias_log import history, move_alias
from streamd.service.snapshots import ALIAS_RE, list_versions, resolve_version


def list_aliases(root: Path) -> dict[str, str]:
    """Every alias of the root and the version it names (a dangling one names None)."""
    if not root.is_dir():
        return {}
    names = sorted(p.name for p in root.iterdir() if p.is_file() and ALIAS_RE.match(p.name))
    return {name: resolve_version(root, name) for name in names}


def promote(root: Path, alias: str, version: str, actor: str) -> dict:
    """Points ``alias`` at ``version`` (a version or another alias); returns the audit entry."""
    _check_alias(alias)
    target = resolve_version(root, version)
    if target is None:
        raise NotFoundError(f"no snapshot {version} in {root}")
    return move_alias(root, alias, target, "promote", actor)


def rollback(root: Path, alias: str, actor: str) -> dict:
    """Points ``alias`` back at the version it named before its last change."""
    _check_alias(alias)
    changes = [e for e in history(root) if e["alias"] == alias]
    if not changes or changes[-1]["from"] is None:
        raise NotFoundError(f"alias {alias!r} has no earlier version to roll back to")
    target = changes[-1]["from"]
    if target not in list_versions(root):
        raise NotFoundError(f"alias {alias!r} named {target} before, which retention has removed since")
    return move_alias(root, alias, target, "rollback", actor)


def _check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias):
        raise UsageError(f"an alias is 1-32 of a-z, 0-9, '-', '_' starting with a letter, and not vNNNNNN: {alias!r}")
