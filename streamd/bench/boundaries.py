"""``streamd bench boundaries``: how well the drift detector finds task boundaries without headers.

Real data (mnist5k or digits) is split into tasks (by class or by rotation) and streamed in
batches, with no task header, through a learner that trains one step per batch like the daemon
does. Each true boundary counts as found when the first alarm inside its task comes within
``--max-delay`` batches; the delay is in batches after the task's first batch (0 = at that batch);
every other alarm is a false boundary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from streamd.service.boundary import BoundaryDetector
from streamd.config import BoundaryConfig
from streamd.learning.data import task_stream
from streamd.learning.learner import build_learner

TINY_HEADS = {"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 32}


def register(subparsers) -> None:
    p = subparsers.add_parser("boundaries", help="drift-detector delay, misses and false alarms on task streams",
                              description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", help="mnist5k or digits")
    p.add_argument("--splits", default="class,rotation", help="comma-separated: class, rotation, colour, permutation")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--runs", type=int, default=3, help="seeds per split (task order and batches differ)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--arch", default="resnet_tiny")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True, help="train one SSL step per batch (daemon-like)")
    p.add_argument("--max-delay", type=int, default=5, help="batches after a true boundary that still count as found")
    p.add_argument("--detector", type=json.loads, default={}, help="JSON overrides of the [boundary] settings")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    p.set_defaults(func=main)


def stream_batches(dataset: str, split: str, n_tasks: int, image_size: int, batch_size: int, seed: int):
    """Batches of one task each (tasks in a seeded order, rows shuffled), and the batch index of each task start."""
    gen = torch.Generator().manual_seed(seed)
    tasks = task_stream(dataset, split, n_tasks, image_size, seed=seed)
    order = torch.randperm(len(tasks), generator=gen).tolist()
    batches, starts = [], []
    for t in order:
        images = tasks[t].images[torch.randperm(len(tasks[t].images), generator=gen)]
        starts.append(len(batches))
        batches += list(images.split(batch_size))
    return batches, starts[1:]


def score(alarms: list[int], starts: list[int], n_batches: int, max_delay: int) -> dict:
    """Matches alarms to true boundaries: the first alarm in [start, start + max_delay] finds it."""
    delays, missed, used = [], [], set()
    for s in starts:
        hit = next((a for a in alarms if s <= a <= s + max_delay), None)
        if hit is None:
            missed.append(s)
        else:
            used.add(hit)
            delays.append(hit - s)
    return {"true_boundaries": starts, "alarms": alarms, "delays": delays, "missed": len(missed),
            "false": len([a for a in alarms if a not in used]), "batches": n_batches}


def run_once(args, split: str, seed: int) -> dict:
    torch.manual_seed(seed)
    batches, starts = stream_batches(args.dataset, split, args.tasks, args.image_size, args.batch_size, seed)
    learner = build_learner(args.arch, args.image_size, "simsiam", objective_kwargs=TINY_HEADS, device="cpu")
    cfg = BoundaryConfig(mode="drift", **args.detector)
    detector = BoundaryDetector("drift", **cfg.model_dump(exclude={"mode"}), seed=seed)
    alarms = []
    t0 = time.perf_counter()
    for i, images in enumerate(batches):
        if detector.observe(images, None, f"batch@{i}", learner.embed) is not None:
            alarms.append(i)
            learner.begin_task(detector.task)
        if args.train:
            learner.step(images)
    result = score(alarms, starts, len(batches), args.max_delay)
    result.update(split=split, seed=seed, seconds=round(time.perf_counter() - t0, 1))
    return result


def main(args) -> int:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    runs = [run_once(args, split, seed) for split in args.splits.split(",") for seed in range(args.runs)]
    summary = {}
    for split in args.splits.split(","):
        rs = [r for r in runs if r["split"] == split]
        delays = [d for r in rs for d in r["delays"]]
        summary[split] = {"true_boundaries": sum(len(r["true_boundaries"]) for r in rs),
                          "found": len(delays), "missed": sum(r["missed"] for r in rs),
                          "false": sum(r["false"] for r in rs),
                          "delay_mean": round(statistics.mean(delays), 2) if delays else None,
                          "delay_max": max(delays) if delays else None}
    report = {"dataset": args.dataset, "tasks": args.tasks, "batch_size": args.batch_size,
              "image_size": args.image_size, "arch": args.arch, "train": args.train, "max_delay": args.max_delay,
              "detector": BoundaryConfig(mode="drift", **args.detector).model_dump(), "summary": summary, "runs": runs}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0
