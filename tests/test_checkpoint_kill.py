"""SIGKILL at every step of a checkpoint save, in a real process, over an existing good checkpoint:
a fresh process then loads either the old or the new checkpoint, whole; never nothing, never a crash."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from checkpoint_child import describe, state

import streamd.service.checkpoint as ckpt

CHILD = Path(__file__).with_name("checkpoint_child.py")
OLD = (1, 0)                                           # (step, tag) of the checkpoint already there
NEW = {"next_step": (2, 0), "same_step": (1, 1)}       # the save that is killed
KEEP = 1  # the save also prunes the old checkpoint: the kill hits the delete too
# Every kind of step a save must expose, so that no part of it escapes the kill test.
REQUIRED = {"write:state.pt:before#1", "write:state.pt:after#1", "write:000.arrow:before#1",
            "write:000.arrow:after#1", "folder_synced#1", "renamed#1", "root_synced#1", "pointer_written#1",
            "pointer_swapped#1", "pointer_synced#1", "prune:moved#1", "prune:unlinked#1", "prune:unlinked#2",
            "pruned#1"}


def recorded_steps(root: Path, new: tuple[int, int], monkeypatch) -> list[str]:
    """The steps of the same save, in order, each as ``name#n`` (the n-th time it comes)."""
    seen, steps = Counter(), []

    def record(name: str) -> None:
        seen[name] += 1
        steps.append(f"{name}#{seen[name]}")

    ckpt.save_checkpoint(root, OLD[0], state(*OLD), keep=KEEP)
    monkeypatch.setattr(ckpt, "step_hook", record)
    ckpt.save_checkpoint(root, new[0], state(*new), keep=KEEP)
    monkeypatch.setattr(ckpt, "step_hook", None)
    return steps


def run_children(commands: list[list[str]], parallel: int = 3) -> list[subprocess.CompletedProcess]:
    results = []
    for start in range(0, len(commands), parallel):
        procs = [subprocess.Popen([sys.executable, str(CHILD), *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for c in commands[start:start + parallel]]
        for proc, command in zip(procs, commands[start:start + parallel]):
            out, err = proc.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(NEW))
def test_kill_at_every_save_step_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch, scenario):
    new = NEW[scenario]
    steps = recorded_steps(tmp_path / "recorded", new, monkeypatch)
    assert REQUIRED <= set(steps), f"save steps missing: {REQUIRED - set(steps)}"
    roots = []
    for i, step in enumerate(steps):
        root = tmp_path / f"{i:02d}-{step.replace(':', '_').replace('#', '_')}"
        ckpt.save_checkpoint(root, OLD[0], state(*OLD), keep=KEEP)
        roots.append(root)

    saves = run_children([["save", str(root), str(new[0]), str(new[1]), str(KEEP), step]
                          for root, step in zip(roots, steps)])
    for step, result in zip(steps, saves):
        assert result.returncode == -signal.SIGKILL, f"not killed at {step}: rc {result.returncode}\n{result.stderr}"

    (loads,) = run_children([["load", *map(str, roots)]], parallel=1)
    assert loads.returncode == 0, loads.stderr
    reports = [json.loads(line) for line in loads.stdout.splitlines()]
    assert [r["root"] for r in reports] == list(map(str, roots))
    swapped = steps.index("pointer_swapped#1")
    for i, (step, report) in enumerate(zip(steps, reports)):
        assert "error" not in report, f"killed at {step}: {report['error']}"
        expected = new if i >= swapped else OLD   # once LATEST moved, the new one; before, the old one
        assert report["loaded"] == describe(state(*expected)), f"killed at {step}: loaded {report['loaded']}"
        assert report["after_next_save"] == describe(state(99, 0)), f"killed at {step}: the next save"
        assert report["names"] == ["LATEST", "ckpt-000000099"], f"killed at {step}: leftovers {report['names']}"
