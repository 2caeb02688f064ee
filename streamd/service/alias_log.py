"""Moving an alias pointer, and the audit trail of every move (``aliases.log`` in the snapshot root).

Shared by the publisher (the daemon moves ``latest``) and by operators' promotions and rollbacks
(streamd.service.aliases): one JSON line per move with time, alias, from, to, action and actor.
The line is written after the pointer is durably replaced, so the log never claims a move that did
not happen; a rollback reads the last line of its alias.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from streamd import durable

AUDIT_LOG = "aliases.log"
log = logging.getLogger("streamd.aliases")


def move_alias(root: Path, alias: str, target: str, action: str, actor: str) -> dict:
    entry = {"time": time.time(), "alias": alias, "from": durable.read_pointer(root, alias), "to": target,
             "action": action, "actor": actor}
    durable.write_pointer(root, alias, target)
    with open(root / AUDIT_LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    if actor != "daemon":   # the daemon's own moves of latest are logged with their snapshot
        log.info("alias %s: %s -> %s (%s by %s)", alias, entry["from"], target, action, actor)
    return entry


def history(root: Path) -> list[dict]:
    try:
        lines = (root / AUDIT_LOG).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
