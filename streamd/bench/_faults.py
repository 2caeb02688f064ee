"""Fault injection for the crash tests and the chaos bench, kept out of the production command.

``python -m streamd.bench._faults SPEC run --config ...`` runs the streamd CLI after installing the
faults of SPEC (comma-separated) through the checkpoint module's step hook:
``checkpoint_sleep=S`` sleeps inside every checkpoint write, after the files are written and
before the rename (a kill there is a kill mid-checkpoint); ``checkpoint_enospc`` makes every
checkpoint file write fail like a full disk.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import time

import streamd.service.checkpoint as ckpt

log = logging.getLogger(__name__)


def install(spec: str) -> None:
    sleep_s, full_disk = None, False
    for fault in spec.split(","):
        name, _, value = fault.partition("=")
        if name == "checkpoint_sleep":
            sleep_s = float(value)
        elif name == "checkpoint_enospc":
            full_disk = True
        else:
            raise ValueError(f"unknown test fault {name!r}")
        log.warning("TEST FAULT ACTIVE: %s", fault)

    def at_step(step: str) -> None:
        if full_disk and step.startswith("write:") and step.endswith(":before"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if sleep_s is not None and step == "folder_synced":
            time.sleep(sleep_s)
    ckpt.step_hook = at_step


def main(argv: list[str]) -> int:
    from streamd.cli import main as cli_main

    install(argv[0])
    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
