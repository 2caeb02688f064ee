"""``streamd bench table``: a markdown page from ``bench cl`` JSON files (docs/results.md is made so)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

COLUMNS = ("strategy", "avg acc", "acc - first row (paired)", "forgetting", "forgetting - first row (paired)", "BWT",
           "linear probe", "step ms (median; last task)", "train memory MB (peak; last task)", "backward GFLOP/step",
           "frozen blocks (middle step of each task)")


def register(subparsers) -> None:
    p = subparsers.add_parser("table", help="markdown tables of `bench cl` results", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by `streamd bench cl --out`")
    p.add_argument("--command", action="append", default=[], help="the command that produced the results (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=main)


def stat(entry: dict | None, fmt: str) -> str:
    """"0.871" for one seed, "0.871 ± 0.012" (sample sd) for several."""
    if entry is None:
        return "-"
    text = format(entry["mean"], fmt)
    return text if len(entry["values"]) == 1 else f"{text} ± {entry['std']:.3f}"


def summary_row(entry: dict, runs: list[dict]) -> list[str]:
    mine = [r for r in runs if r["strategy"] == entry["strategy"]]
    first = entry["strategy"] == runs[0]["strategy"]
    return [entry["strategy"], stat(entry["avg_acc"], ".3f"),
            "-" if first else stat(entry["avg_acc_minus_reference"], "+.3f"),
            stat(entry["forgetting"], "+.3f"),
            "-" if first else stat(entry["forgetting_minus_reference"], "+.3f"), stat(entry["bwt"], "+.3f"), stat(entry.get("linear_probe_avg_acc"), ".3f"),
            f"{statistics.median(r['step_seconds_median'] for r in mine) * 1e3:.0f}; {_last_task_step_ms(mine)}",
            f"{max(r['peak_memory_bytes'] for r in mine) / 1e6:.1f}; {_last_task_memory(mine)}",
            f"{entry['backward_flops_per_step']['mean'] / 1e9:.2f}", _frozen(mine)]


def _last_task_step_ms(runs: list[dict]) -> str:
    """Freezing acts from task 1 on, so the run's median hides what the last task's steps cost."""
    last = [r["step_seconds_median_per_task"][-1] for r in runs if "step_seconds_median_per_task" in r]
    return f"{statistics.median(last) * 1e3:.0f}" if len(last) == len(runs) else "-"


def _last_task_memory(runs: list[dict]) -> str:
    """Per-task training bytes exist on CPU only (on GPU the allocator's peak covers the run)."""
    last = [(r.get("train_memory_bytes_per_task") or [0])[-1] for r in runs]
    return f"{statistics.fmean(last) / 1e6:.1f}" if all(last) else "-"


def _frozen(runs: list[dict]) -> str:
    """The frozen-block count of each task, averaged over seeds where they differ."""
    per_task = list(zip(*(r["frozen_blocks_per_task"] for r in runs)))
    return ", ".join(f"{statistics.fmean(t):g}" for t in per_task) if any(map(any, per_task)) else "-"


def _task_inference(runs: list[dict]) -> list[str]:
    """Mask learners are probed without task ids too: how often they found the task of a test chunk."""
    found = {}
    for r in runs:
        if "task_inference_accuracy" in r:
            found.setdefault(r["strategy"], []).append(r["task_inference_accuracy"])
    return ["", "Task inferred without its id (chunks of 64 test images; the linear probe uses it): " + "; ".join(
        f"{name} {statistics.fmean(v):.2f} (per seed {', '.join(f'{x:.2f}' for x in v)})" for name, v in found.items())
    ] if found else []


def section(result: dict, source: Path, plot: Path | None, out_dir: Path) -> list[str]:
    m = result["machine"]
    options = f" Plugin options: `{json.dumps(result['plugin_options'])}`." if result.get("plugin_options") else ""
    seeds = result["seeds"]
    spread = " (mean ± sample sd over seeds; paired: per-seed difference from the first row)" if len(seeds) > 1 else ""
    lines = [f"## {result['dataset']}, {result['split']} split, {result['tasks']} tasks, {result['objective']} "
             f"(`{source.name}`)", "",
             f"Encoder {result['arch']} at {result['image_size']} px, batch {result['batch_size']}, "
             f"{result['steps_per_task']} steps per task, seeds {', '.join(map(str, seeds))}{spread}.{options} "
             f"Machine: {m.get('device')} ({m.get('cpu_count')} cores, torch {m.get('torch')}, "
             f"torch threads: {m.get('torch_threads')}). Memory: {m.get('peak_memory_method')}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(summary_row(e, result["runs"])) + " |" for e in result["summary"]]
    lines += _task_inference(result["runs"])
    if plot is not None and plot.exists():
        lines += ["", f"![accuracy matrices, mean over seeds]({os.path.relpath(plot, out_dir)})"]
    return lines + [""]


def main(args: argparse.Namespace) -> int:
    lines = ["# Benchmark results", "", "Generated by `streamd bench table` from `streamd bench cl` runs:", ""]
    lines += [f"    {c}" for c in args.command] + [""]
    lines += ["Accuracy is the weighted kNN (cosine, T = 0.1, k = 200) per task (task-aware); R[i][j] is the "
              "accuracy on task j after training task i; forgetting is the mean over earlier tasks of the best "
              "earlier accuracy minus the final one; the linear probe is task-agnostic on the final encoder.", ""]
    for path in args.results:
        png = path.with_suffix(".png")
        lines += section(json.loads(path.read_text()), path, png if png.exists() else None, args.out.parent)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0
