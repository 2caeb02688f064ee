"""The publish gate: ``latest`` moves only to a snapshot whose probe says it is healthy.

Downstream jobs that follow ``latest`` fine-tune whatever it names, so a collapsed encoder, or one
clearly worse than the current ``latest``, is published as a candidate only: its folder exists and
can be pulled by version or promoted by hand, its manifest holds the verdict, and ``latest`` stays.
Checks without evidence (no probe rows yet, no labels, no earlier task) are skipped, not failed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishGate:
    min_std_ratio: float = 0.05        # feature spread: untrained ResNets ~0.13, trained ~0.5, collapsed ~0.02
    min_effective_rank: float = 1.5    # below: the features lie on a line
    max_accuracy_drop: float = 0.15    # mean probe kNN accuracy vs latest's, on the tasks both measured
    max_drift: float = 1.0             # 1 - CKA vs a task's end features; 1 turns the check off

    def judge(self, probe: dict | None, latest_probe: dict | None) -> dict:
        """``{"passed", "failures", "checked"}`` for a snapshot with ``probe`` against ``latest``'s."""
        probe, failures, checked = probe or {}, [], []
        health = probe.get("health") or {}
        if "std_ratio" in health:
            checked.append("std_ratio")
            if health["std_ratio"] < self.min_std_ratio:
                failures.append(f"collapse: feature spread {health['std_ratio']:.3f} < {self.min_std_ratio}")
        if "effective_rank" in health:
            checked.append("effective_rank")
            if health["effective_rank"] < self.min_effective_rank:
                failures.append(f"dimensional collapse: effective rank {health['effective_rank']:.2f} "
                                f"< {self.min_effective_rank}")
        now = {str(k): v for k, v in (probe.get("accuracy") or {}).items()}   # a manifest's keys are strings
        before = {str(k): v for k, v in ((latest_probe or {}).get("accuracy") or {}).items()}
        common = sorted(now.keys() & before.keys())
        if common:   # the same tasks' probe sets: a regression, not a harder new task
            checked.append("accuracy")
            drop = sum(before[t] - now[t] for t in common) / len(common)
            if drop > self.max_accuracy_drop:
                failures.append(f"probe accuracy {drop:.3f} below latest's on tasks {', '.join(common)} "
                                f"(allowed {self.max_accuracy_drop})")
        drift = probe.get("drift") or {}
        if drift and self.max_drift < 1.0:
            checked.append("drift")
            worst = max(drift.values())
            if worst > self.max_drift:
                failures.append(f"drift {worst:.3f} > {self.max_drift}")
        return {"passed": not failures, "failures": failures, "checked": checked}
