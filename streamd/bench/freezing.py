"""``streamd bench freezing``: what freezing the first k encoder blocks saves on a LUMP step.

Learners identical but for their frozen prefix (k = 0 .. blocks-1) step in interleaved rounds
(order reversed every other round) on the same batch; the report gives, per k, the median step
time, the backward FLOPs and the training bytes (CPU method of ``bench cl``), each as a ratio to
k = 0. ``bench cl`` shows when the freeze plugin decides; this shows what a decision buys.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from streamd.models.encoders import EncoderSpec, build_encoder
from streamd.models.objectives import OBJECTIVES
from streamd.bench import _memory
from streamd.bench._machine import describe_machine, synced_clock
from streamd.bench.cl import objective_kwargs
from streamd.learning.flops import backward_flops
from streamd.learning.learner import build_learner, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser("freezing", help="step time, backward FLOPs and memory per frozen prefix",
                              description=__doc__.splitlines()[0])
    p.add_argument("--objective", default="simsiam", choices=sorted(OBJECTIVES))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    for name in ("proj_hidden", "proj_dim", "pred_hidden"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help="head size (objective default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=main)


def frozen_learners(args: argparse.Namespace, images: torch.Tensor) -> list:
    heads = objective_kwargs(args.objective, vars(args))
    learners = []
    for k in range(len(build_encoder(EncoderSpec(args.arch, args.image_size)).block_names)):
        torch.manual_seed(0)
        learner = build_learner(args.arch, args.image_size, args.objective, "lump", objective_kwargs=heads,
                                device=args.device)
        learner.step(images)          # fills LUMP's buffer: the next steps mix
        learner.encoder.freeze_prefix(k)
        learner.step(images)          # warm-up with this prefix
        learners.append(learner)
    return learners


def main(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8)
    learners = frozen_learners(args, images)
    seconds = [[] for _ in learners]
    for r in range(args.rounds):
        order = range(len(learners)) if r % 2 == 0 else reversed(range(len(learners)))
        for k in order:
            start = synced_clock(device)
            learners[k].step(images)
            seconds[k].append(synced_clock(device) - start)
    rows = []
    for k, learner in enumerate(learners):
        rows.append({"frozen_blocks": k, "blocks": learner.encoder.block_names[:k],
                     "step_seconds_median": statistics.median(seconds[k]),
                     "backward_flops": backward_flops(learner, images),
                     "train_bytes": _memory.step_training_bytes(learner, lambda: learner.step(images))})
    for row in rows:
        for key in ("step_seconds_median", "backward_flops", "train_bytes"):
            row[key + "_vs_unfrozen"] = row[key] / rows[0][key]
        print(f"frozen {row['frozen_blocks']} {row['blocks']}: step {row['step_seconds_median'] * 1e3:.1f} ms "
              f"(x{row['step_seconds_median_vs_unfrozen']:.2f}), backward FLOPs x{row['backward_flops_vs_unfrozen']:.2f}, "
              f"training bytes x{row['train_bytes_vs_unfrozen']:.2f}")
    result = {"objective": args.objective, "arch": args.arch, "image_size": args.image_size, "batch": args.batch,
              "rounds": args.rounds, "machine": {**describe_machine(device), "memory_method": _memory.method(device)},
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0
