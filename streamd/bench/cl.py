"""``streamd bench cl``: continual-learning strategies side by side on a task split of real data.

Every strategy gets the same seed, the same task order, the same batches (indices and which
samples carry labels) and the same number of steps, so differences come from the strategy alone.
After each task the encoder is evaluated on every task's test set with the weighted kNN (task-aware),
giving the accuracy matrix R and its average accuracy, forgetting and backward transfer. With several
seeds every seed redraws the split, the batches and the initial weights, and the JSON adds a summary:
mean and spread per strategy, and each strategy's paired difference from the first one.
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from streamd.models.objectives import OBJECTIVES
from streamd.bench import _memory
from streamd.bench._machine import describe_machine, synced_clock
from streamd.bench._summary import summarize
from streamd.learning.data import Task, task_stream, train_test
from streamd.errors import UsageError
from streamd.extras import import_extra
from streamd.learning.evaluation import (accuracy_row, average_accuracy, backward_transfer, forgetting,
                                task_inference_accuracy)
from streamd.learning.flops import backward_flops
from streamd.learning.learner import build_learner, resolve_device
from streamd.learning.optim import OptimConfig
from streamd.learning.plugins import strategy_plugins, validate_plugin_options

# --quick: tiny encoder, small images and heads, few steps: < 2 minutes on 2 CPU cores for 3 strategies.
QUICK = {"arch": "resnet_tiny", "image_size": 16, "batch_size": 32, "steps_per_task": 20,
         "proj_hidden": 128, "proj_dim": 64, "pred_hidden": 32}
FULL = {"arch": "resnet18", "image_size": 32, "batch_size": 64, "steps_per_task": 200,
        "proj_hidden": None, "proj_dim": None, "pred_hidden": None}


def register(subparsers) -> None:
    p = subparsers.add_parser("cl", help="compare continual-learning strategies on a task split",
                              description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", help="mnist5k, digits or imagefolder:PATH")
    p.add_argument("--split", default="class", choices=["class", "rotation", "permutation", "colour"])
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--objective", default="simsiam", choices=sorted(OBJECTIVES))
    p.add_argument("--strategies", default="finetune,replay,lump",
                   help="comma-separated; plugins combine with '+', e.g. cassle+replay")
    p.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated, e.g. 0,1,2 (default 0)")
    p.add_argument("--quick", action="store_true", help="tiny settings: " + json.dumps(QUICK))
    for name in ("steps_per_task", "batch_size", "image_size", "proj_hidden", "proj_dim", "pred_hidden"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"default {FULL[name]} ({QUICK[name]} with --quick)")
    p.add_argument("--arch", default=None, help=f"encoder; default {FULL['arch']} ({QUICK['arch']} with --quick)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--label-fraction", type=float, default=0.1,
                   help="share of training samples passed with their label (the rest -1)")
    p.add_argument("--plugin-options", type=json.loads, default={},
                   help='JSON kwargs per plugin, e.g. \'{"replay": {"capacity": 256}}\'')
    p.add_argument("--linear-probe", action=argparse.BooleanOptionalAction, default=True,
                   help="also report a linear probe on the final encoder (all tasks' classes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("bench-cl.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG of the accuracy matrices")
    p.set_defaults(func=main)


def seed_list(text: str) -> list[int]:
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need distinct integer seeds, got {text!r}")
    return seeds


@dataclass
class Setup:
    """Everything a strategy run shares with the others."""

    args: argparse.Namespace
    seed: int
    arch: str
    image_size: int
    batch_size: int
    steps_per_task: int
    objective_kwargs: dict
    device: torch.device
    splits: list[tuple[Task, Task]]
    schedule: list[list[tuple[torch.Tensor, torch.Tensor]]]   # per task, per step: (indices, labelled mask)


def resolve(args: argparse.Namespace) -> dict:
    defaults = QUICK if args.quick else FULL
    return {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}


def objective_kwargs(objective: str, values: dict) -> dict:
    """The head sizes the chosen objective accepts (not every objective has a predictor)."""
    accepted = inspect.signature(OBJECTIVES[objective].__init__).parameters
    return {k: v for k, v in values.items() if k in accepted and v is not None}


def batch_schedule(n: int, batch_size: int, steps: int, label_fraction: float, seed: int):
    """Shuffled epochs of one task's indices cut into ``steps`` batches, plus who is labelled."""
    gen = torch.Generator().manual_seed(seed)
    epochs = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
    labelled = torch.rand(steps, batch_size, generator=gen) < label_fraction
    return [(order[s * batch_size:(s + 1) * batch_size], labelled[s]) for s in range(steps)]


def prepare(args: argparse.Namespace, seed: int) -> Setup:
    v = resolve(args)
    tasks = task_stream(args.dataset, args.split, args.tasks, v["image_size"], seed)
    splits = [train_test(t, 0.2, seed) for t in tasks]
    schedule = [batch_schedule(len(train.labels), v["batch_size"], v["steps_per_task"], args.label_fraction,
                               seed * 1000 + i) for i, (train, _) in enumerate(splits)]
    return Setup(args, seed, v["arch"], v["image_size"], v["batch_size"], v["steps_per_task"],
                 objective_kwargs(args.objective, v), resolve_device(args.device), splits, schedule)


def train_task(learner, train: Task, schedule, device: torch.device) -> tuple[list[float], int, int, int]:
    """One task's steps: the seconds of each, and the backward FLOPs, (CPU) training bytes and
    frozen encoder blocks of its middle step.

    The middle step, not the last: plugins make their boundary measurements and decisions
    (freezing's CKA and FLOP counts) at a task's last steps; those extra passes are not training
    memory, and a decision taken there applies to the next task's steps, not to this one's."""
    seconds, memory, flops, frozen = [], 0, 0, 0
    for s, (idx, labelled) in enumerate(schedule):
        images, labels = train.images[idx], train.labels[idx].where(labelled, -1)
        middle = s == len(schedule) // 2
        if middle:
            flops, frozen = backward_flops(learner, images), learner.encoder.frozen_blocks
        start = synced_clock(device)
        if device.type == "cpu" and middle:
            memory = _memory.step_training_bytes(learner, lambda: learner.step(images, labels))
        else:
            learner.step(images, labels)
        seconds.append(synced_clock(device) - start)
    return seconds, memory, flops, frozen


def run_strategy(setup: Setup, strategy: str) -> dict:
    args, device = setup.args, setup.device
    torch.manual_seed(setup.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    used = strategy_plugins(strategy)    # --plugin-options serves every strategy: each takes its plugins' part
    learner = build_learner(setup.arch, setup.image_size, args.objective, strategy,
                            objective_kwargs=setup.objective_kwargs,
                            plugin_options={k: v for k, v in args.plugin_options.items() if k in used},
                            optim=OptimConfig(lr=args.lr), device=str(device))
    R, seconds, task_medians, task_memory, flops, frozen = [], [], [], [], [], []
    for t, (train, _) in enumerate(setup.splits):
        learner.begin_task(t)
        task_seconds, memory, task_flops, task_frozen = train_task(learner, train, setup.schedule[t], device)
        seconds, task_memory, flops = seconds + task_seconds, task_memory + [memory], flops + [task_flops]
        task_medians.append(statistics.median(task_seconds))
        frozen.append(task_frozen)
        learner.end_task()
        R.append(accuracy_row(learner, setup.splits, seen=t))
        print(f"[{strategy} seed {setup.seed}] after task {t}: " + " ".join(f"{a:.3f}" for a in R[-1]), flush=True)
    # The peak is the first task's for freezing (nothing frozen yet): the per-task figures show the saving.
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else max(task_memory)
    run = {"strategy": strategy, "seed": setup.seed, "acc_matrix": R, "avg_acc": average_accuracy(R), "forgetting": forgetting(R),
           "bwt": backward_transfer(R), "step_seconds_median": statistics.median(seconds),
           "step_seconds_median_per_task": task_medians,
           "peak_memory_bytes": int(memory), "train_memory_bytes_per_task": task_memory,
           "backward_flops_per_step": int(statistics.mean(flops)), "frozen_blocks_per_task": frozen}
    if args.linear_probe:
        final = accuracy_row(learner, setup.splits, seen=len(setup.splits) - 1, mode="agnostic", classifier="linear")
        run["linear_probe_avg_acc"] = sum(final) / len(final)
    inferred = task_inference_accuracy(learner, setup.splits)
    if inferred is not None:   # mask learners: how often the task of a test chunk is found without its id
        run["task_inference_accuracy"] = inferred
    return run


def plot(result: dict, path: Path) -> None:
    """One heatmap of R per strategy, averaged over seeds (rows: after task i; columns: evaluated task j)."""
    matplotlib = import_extra("matplotlib", "the benchmark plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["summary"]
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.8), squeeze=False)
    for ax, run in zip(axes[0], runs):
        R = torch.tensor([r["acc_matrix"] for r in result["runs"] if r["strategy"] == run["strategy"]]).mean(0)
        ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
        for (i, j), a in zip(torch.cartesian_prod(torch.arange(R.shape[0]), torch.arange(R.shape[1])).tolist(),
                             R.flatten().tolist()):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=7, color="white" if a < 0.6 else "black")
        ax.set_title(f"{run['strategy']}\nacc {run['avg_acc']['mean']:.3f} fgt {run['forgetting']['mean']:.3f}",
                     fontsize=9)
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("after task i")
    fig.suptitle(f"{result['dataset']} {result['split']} x{result['tasks']}, {result['objective']}, "
                 f"{result['steps_per_task']} steps/task, mean of seeds {result['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_plugin_options(strategies: list[str], options: dict[str, dict]) -> None:
    """Before any training: each strategy accepts its part of ``options``, and every part is used."""
    try:
        for strategy in strategies:
            validate_plugin_options(strategy, {k: v for k, v in options.items() if k in strategy_plugins(strategy)})
    except ValueError as e:
        raise UsageError(f"--plugin-options: {e}") from None
    unused = sorted(set(options) - {p for s in strategies for p in strategy_plugins(s)})
    if unused:
        raise UsageError(f"--plugin-options for {', '.join(unused)}, which no strategy of {strategies} uses")


def main(args: argparse.Namespace) -> int:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    check_plugin_options(strategies, args.plugin_options)
    setups = [prepare(args, seed) for seed in args.seeds]
    setup = setups[0]
    result = {"dataset": args.dataset, "objective": args.objective, "split": args.split, "tasks": args.tasks,
              "steps_per_task": setup.steps_per_task, "seeds": args.seeds, "arch": setup.arch,
              "image_size": setup.image_size, "batch_size": setup.batch_size, "lr": args.lr,
              "label_fraction": args.label_fraction, "plugin_options": args.plugin_options,
              "machine": {**describe_machine(setup.device), "peak_memory_method": _memory.method(setup.device)},
              "runs": []}
    for setup in setups:
        for strategy in strategies:
            result["runs"].append(run_strategy(setup, strategy))
            result["summary"] = summarize(result["runs"])
            args.out.write_text(json.dumps(result, indent=2))   # partial results survive a later failure
    if args.plot:
        plot(result, args.plot)
    for entry in result["summary"]:
        acc, fgt, diff = entry["avg_acc"], entry["forgetting"], entry["avg_acc_minus_reference"]
        print(f"{entry['strategy']:>24}: avg_acc {acc['mean']:.3f} ± {acc['std']:.3f}  "
              f"forgetting {fgt['mean']:+.3f} ± {fgt['std']:.3f}  "
              f"acc - {entry['vs']} {diff['mean']:+.3f} ± {diff['std']:.3f}  ({len(entry['seeds'])} seeds)")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0
