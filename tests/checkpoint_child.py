"""A separate process for the checkpoint kill tests (``python checkpoint_child.py save|load ...``).

``save ROOT STEP TAG KEEP KILL_AT`` saves ``state(STEP, TAG)`` and SIGKILLs itself at the save step
KILL_AT (``name#n``: the n-th time the step ``name`` comes); ``load ROOT...`` loads each folder in
this fresh process, then saves once more over what it found, and prints one JSON line per folder.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter

import pyarrow as pa
import torch

import streamd.service.checkpoint as ckpt


def state(step: int, tag: int) -> dict:
    """Distinct content for every (step, tag): a re-save of a step is told apart from the first save."""
    value = step * 100 + tag
    return {"weights": torch.full((3,), float(value)), "counters": {"step": step, "tag": tag},
            "plugins": {"replay": {"buffer": pa.table({"label": pa.array([value, value + 1])})}}}


def describe(loaded: dict) -> dict:
    """What a loaded state holds, as plain JSON."""
    return {"weights": loaded["weights"].tolist(), "counters": loaded["counters"],
            "buffer": loaded["plugins"]["replay"]["buffer"].column("label").to_pylist()}


def save_killed_at(root: str, step: int, tag: int, keep: int, kill_at: str) -> None:
    seen: Counter = Counter()

    def hook(name: str) -> None:
        seen[name] += 1
        if f"{name}#{seen[name]}" == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.step_hook = hook
    ckpt.save_checkpoint(root, step, state(step, tag), keep=keep)


def load_then_save(root: str) -> dict:
    try:
        loaded = describe(ckpt.load_checkpoint(root))
    except Exception as e:  # reported, so that the test shows which case failed and how
        return {"root": root, "error": f"{type(e).__name__}: {e}"}
    ckpt.save_checkpoint(root, 99, state(99, 0), keep=1)
    return {"root": root, "loaded": loaded, "after_next_save": describe(ckpt.load_checkpoint(root)),
            "names": sorted(os.listdir(root))}


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "save":
        save_killed_at(args[0], int(args[1]), int(args[2]), int(args[3]), args[4])
    else:
        for root in args:
            print(json.dumps(load_then_save(root)), flush=True)
