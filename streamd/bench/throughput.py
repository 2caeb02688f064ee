"""``streamd bench throughput``: what the learner's plumbing costs against a bare PyTorch loop.

The bare loop is the textbook SSL step written out here (same encoder, objective, kornia
augmentation, optimizer, precision and memory format), not the Learner. Bare loop, learner and
augmentation alone run interleaved in rounds (A B C, then C B A, ...), so a machine that speeds up
or slows down over the run (other processes, thermal limits) and the position inside a round affect
all three alike; the first round warms up and is dropped, and each rate comes from the median round.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

import torch

from streamd.models.encoders import EncoderSpec, build_encoder
from streamd.models.objectives import OBJECTIVES, build_objective
from streamd.learning.augment import TwoViewAugment
from streamd.bench._machine import describe_machine, synced_clock
from streamd.learning.learner import build_learner, resolve_device
from streamd.learning.optim import OptimConfig

LEARNER_VS_BARE_MIN = 0.95     # the learner may cost at most 5% over the bare loop
AUGMENT_VS_TRAIN_MIN = 3.0     # augmentation must never be the bottleneck


def register(subparsers) -> None:
    p = subparsers.add_parser("throughput", help="learner step vs a bare PyTorch loop vs augmentation alone",
                              description=__doc__.splitlines()[0])
    p.add_argument("--objective", default="simsiam", choices=sorted(OBJECTIVES))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="steps of each kind per round")
    p.add_argument("--rounds", type=int, default=6, help="measured rounds (after one warm-up round)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=main)


def bare_step(args: argparse.Namespace, device: torch.device, images: torch.Tensor):
    """The plain loop: augment, forward, backward, optimizer step, momentum update."""
    encoder = build_encoder(EncoderSpec(args.arch, args.image_size))
    objective = build_objective(args.objective, encoder).to(device)
    augment = TwoViewAugment(args.image_size).to(device)
    cfg = OptimConfig()
    optimizer = torch.optim.SGD(objective.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    on_gpu = device.type == "cuda"
    if on_gpu:
        objective.to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_gpu else contextlib.nullcontext

    def step():
        v1, v2 = augment(images)
        if on_gpu:
            v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = objective(v1, v2).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        objective.after_optimizer_step()

    return step


def measure(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(args.seed)).to(device)
    torch.manual_seed(args.seed)
    learner = build_learner(args.arch, args.image_size, args.objective, "finetune", device=str(device))
    torch.manual_seed(args.seed)
    kinds = {"bare": bare_step(args, device, images), "learner": lambda: learner.step(images),
             "augment": lambda: learner.augment(images)}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds + 1):
        for kind, step in (list(kinds.items()) if r % 2 else list(kinds.items())[::-1]):
            start = synced_clock(device)
            for _ in range(args.steps):
                step()
            if r:  # round 0 warms up
                seconds[kind].append(synced_clock(device) - start)
    # The median round resists bursts of load from other processes better than a sum.
    rate = {k: args.batch * args.steps / statistics.median(s) for k, s in seconds.items()}
    ratios = {"learner_vs_bare": rate["learner"] / rate["bare"], "augment_vs_learner": rate["augment"] / rate["learner"]}
    return {"objective": args.objective, "arch": args.arch, "image_size": args.image_size, "batch": args.batch,
            "steps_per_round": args.steps, "rounds": args.rounds, "machine": describe_machine(device),
            "images_per_second": rate, "ratios": ratios, "round_seconds": seconds,
            "passed": verdicts(ratios)}


def verdicts(ratios: dict[str, float]) -> dict[str, bool]:
    """Whether each ratio meets its floor."""
    return {"learner_vs_bare": ratios["learner_vs_bare"] >= LEARNER_VS_BARE_MIN,
            "augment_vs_learner": ratios["augment_vs_learner"] >= AUGMENT_VS_TRAIN_MIN}


def main(args: argparse.Namespace) -> int:
    result = measure(args)
    rate, ratios = result["images_per_second"], result["ratios"]
    print(f"{args.arch} {args.image_size}px batch {args.batch} {args.objective} on {result['machine']['device']}")
    for kind, r in rate.items():
        print(f"  {kind:>8}: {r:9.1f} images/s")
    print(f"  learner/bare   {ratios['learner_vs_bare']:.3f} (need >= {LEARNER_VS_BARE_MIN})")
    print(f"  augment/learner {ratios['augment_vs_learner']:.2f} (need >= {AUGMENT_VS_TRAIN_MIN})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0
