"""Across seeds: each strategy's mean and spread, and its paired difference from the first strategy.

Runs of one seed share the split, the batches and the initial weights, so the per-seed difference
between two strategies cancels most of the seed-to-seed variation; its mean and sample standard
deviation say more than two means side by side.
"""
from __future__ import annotations

import statistics

METRICS = ("avg_acc", "forgetting", "bwt", "linear_probe_avg_acc", "backward_flops_per_step")


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarize(runs: list[dict]) -> list[dict]:
    """One entry per strategy, in the order the strategies ran; paired differences use the first one."""
    strategies = list(dict.fromkeys(r["strategy"] for r in runs))
    by_seed = {(r["strategy"], r["seed"]): r for r in runs}
    reference = strategies[0]
    summary = []
    for strategy in strategies:
        mine = [r for r in runs if r["strategy"] == strategy]
        entry = {"strategy": strategy, "seeds": [r["seed"] for r in mine]}
        for metric in METRICS:
            if all(metric in r for r in mine):
                entry[metric] = spread([r[metric] for r in mine])
        paired = [(r, by_seed[(reference, r["seed"])]) for r in mine if (reference, r["seed"]) in by_seed]
        entry["vs"] = reference
        for metric in ("avg_acc", "forgetting"):
            entry[f"{metric}_minus_reference"] = spread([r[metric] - ref[metric] for r, ref in paired])
        summary.append(entry)
    return summary
