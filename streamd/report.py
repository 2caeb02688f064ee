"""Plots and a short markdown summary of a probe history (what the prober wrote next to the snapshots).

Accuracy matrix R[i][j] = the last kNN accuracy on task j measured while task i was being learned.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from streamd.learning.evaluation import average_accuracy, forgetting  # noqa: E402
from streamd.service.probe import GLOBAL, read_history  # noqa: E402


def _series(rows: list[dict], metric: str) -> dict[int, tuple[list[int], list[float]]]:
    """task -> (steps, values) of one metric."""
    out: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in rows:
        if r["metric"] == metric:
            out[r["task"]][0].append(r["step"])
            out[r["task"]][1].append(r["value"])
    return dict(out)


def accuracy_matrix(rows: list[dict]) -> list[list[float]]:
    """Rows: tasks being learned, in order; columns: tasks measured; NaN where never measured."""
    last: dict[int, dict[int, float]] = defaultdict(dict)
    for r in rows:  # rows are ordered by step, so later measurements overwrite earlier ones
        if r["metric"] == "accuracy":
            last[r["current_task"]][r["task"]] = r["value"]
    if not last:
        return []
    tasks = sorted({t for row in last.values() for t in row} | set(last))
    return [[last[i].get(j, math.nan) for j in tasks] for i in tasks if i in last]


def _line_plot(path: Path, title: str, ylabel: str, series: dict[int, tuple[list, list]], names=None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for task, (steps, values) in sorted(series.items()):
        ax.plot(steps, values, marker=".", label=(names or {}).get(task, f"task {task}"))
    ax.set(title=title, xlabel="training step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _heatmap(path: Path, matrix: list[list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(matrix[0]) + 2, 1.0 * len(matrix) + 1.5))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k")
    ax.set(title="kNN probe accuracy R[i][j]", xlabel="task measured (j)", ylabel="after learning task (i)",
           xticks=range(len(matrix[0])), yticks=range(len(matrix)))
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_report(history: str | Path, out_dir: str | Path) -> Path:
    """Writes the PNGs that the history has data for and ``summary.md``; returns the summary's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_history(Path(history)).to_pylist()
    lines = ["# streamd probe report", ""]
    if not rows:
        lines.append("The history holds no measurements yet.")
        (out / "summary.md").write_text("\n".join(lines) + "\n")
        return out / "summary.md"
    steps = [r["step"] for r in rows]
    lines += [f"- measurements: {len({r['step'] for r in rows})}, steps {min(steps)} to {max(steps)}",
              f"- tasks seen: {len({r['current_task'] for r in rows})}"]
    figures = []
    matrix = accuracy_matrix(rows)
    if matrix:
        _heatmap(out / "accuracy_matrix.png", matrix)
        figures.append(("Accuracy matrix", "accuracy_matrix.png"))
        final = [v for v in matrix[-1] if not math.isnan(v)]
        lines.append(f"- final kNN accuracy per task: {', '.join(f'{v:.3f}' for v in matrix[-1])}"
                     f" (mean {average_accuracy([final]):.3f})")
        if not any(math.isnan(v) for i, row in enumerate(matrix) for v in row[: i + 1]) and final == matrix[-1]:
            lines.append(f"- forgetting over task-end rows (Chaudhry et al.): {forgetting(matrix):.3f}")
    plots = [("forgetting.png", "Forgetting", "best - current accuracy", "forgetting", True),
             ("drift.png", "Representation drift", "1 - linear CKA vs task end", "drift", False),
             ("loss.png", "Training loss", "loss", "loss", False),
             ("throughput.png", "Throughput", "images / second", "images_per_second", False)]
    for filename, title, ylabel, metric, with_mean in plots:
        series = _series(rows, metric)
        if with_mean:
            series.update({GLOBAL: s for s in [_series(rows, "forgetting_mean").get(GLOBAL)] if s})
        if not series:
            continue
        _line_plot(out / filename, title, ylabel, series, names={GLOBAL: "mean" if with_mean else metric})
        figures.append((title, filename))
        last = {task: values[-1] for task, (_, values) in sorted(series.items())}
        lines.append(f"- last {title.lower()}: " + ", ".join(
            f"{'mean' if t == GLOBAL and with_mean else ('all' if t == GLOBAL else f'task {t}')} {v:.3f}"
            for t, v in last.items()))
    lines.append("")
    for title, filename in figures:
        lines += [f"## {title}", "", f"![{title}]({filename})", ""]
    (out / "summary.md").write_text("\n".join(lines))
    return out / "summary.md"
