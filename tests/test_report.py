import math

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from streamd.cli import main as streamd_main
from streamd.service.probe import HISTORY_SCHEMA, History
from streamd.report import accuracy_matrix

ACC = {  # current task -> accuracy on tasks 0..current, as measured at the task's end
    0: {0: 0.9},
    1: {0: 0.7, 1: 0.8},
    2: {0: 0.6, 1: 0.75, 2: 0.85},
}


def history_rows():
    rows, step = [], 0
    for current, accs in ACC.items():
        for fraction in (0.5, 1.0):  # a mid-task measurement, then the task-end one
            step += 100
            for task, acc in accs.items():
                rows.append({"step": step, "time": float(step), "task": task, "current_task": current,
                             "metric": "accuracy", "value": acc * fraction})
                rows.append({"step": step, "time": float(step), "task": task, "current_task": current,
                             "metric": "drift", "value": 0.01 * step / 100})
            rows += [{"step": step, "time": float(step), "task": -1, "current_task": current, "metric": m, "value": v}
                     for m, v in (("forgetting_mean", 0.1 * current), ("loss", 5.0 / step),
                                  ("images_per_second", 500.0))]
    return rows


def test_accuracy_matrix_takes_the_last_measurement_of_each_task():
    matrix = accuracy_matrix(history_rows())
    assert matrix[2] == [0.6, 0.75, 0.85] and matrix[1][:2] == [0.7, 0.8] and math.isnan(matrix[0][1])


def test_report_command_writes_plots_and_summary(tmp_path):
    history = History(tmp_path / "history")
    rows = history_rows()
    history.append(rows[: len(rows) // 2])
    history.append(rows[len(rows) // 2:])
    out = tmp_path / "report"
    assert streamd_main(["report", str(tmp_path / "history"), "--out", str(out)]) == 0
    for name in ["accuracy_matrix.png", "forgetting.png", "drift.png", "loss.png", "throughput.png"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 200
    summary = (out / "summary.md").read_text()
    assert "final kNN accuracy per task: 0.600, 0.750, 0.850 (mean 0.733)" in summary
    # (0.9 - 0.6) and (0.8 - 0.75) averaged over the two earlier tasks
    assert "forgetting over task-end rows (Chaudhry et al.): 0.175" in summary
    assert "![Accuracy matrix](accuracy_matrix.png)" in summary


def test_report_reads_a_single_parquet_file_without_loss_columns(tmp_path):
    rows = [r for r in history_rows() if r["metric"] in ("drift",)]
    pq.write_table(pa.Table.from_pylist(rows, HISTORY_SCHEMA), tmp_path / "h.parquet")
    assert streamd_main(["report", str(tmp_path / "h.parquet"), "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["drift.png", "summary.md"]
