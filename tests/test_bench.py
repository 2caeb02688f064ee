"""The benchmark commands run end to end and write what they promise."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamd.bench.cl import check_plugin_options
from streamd.bench.throughput import measure, verdicts
from streamd.cli import build_parser
from streamd.errors import UsageError
from streamd.learning.evaluation import average_accuracy, backward_transfer, forgetting

RUN_KEYS = {"strategy", "seed", "acc_matrix", "avg_acc", "forgetting", "bwt", "step_seconds_median",
            "peak_memory_bytes", "backward_flops_per_step", "linear_probe_avg_acc", "train_memory_bytes_per_task",
            "frozen_blocks_per_task", "step_seconds_median_per_task"}


def test_bench_cl_quick_writes_json_and_png(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    cmd = [sys.executable, "-m", "streamd", "bench", "cl", "--quick", "--dataset", "digits", "--split", "class",
           "--tasks", "2", "--steps-per-task", "2", "--batch-size", "16", "--image-size", "8", "--strategies", "finetune,replay+lump,lump+freeze",
           "--seeds", "1,2", "--plugin-options", '{"freeze": {"threshold": -1, "decide_after": 1}}', "--out", str(out), "--plot", str(png)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {k: result[k] for k in ("dataset", "objective", "split", "tasks", "steps_per_task", "seeds", "arch",
                                   "image_size", "batch_size")} == {
        "dataset": "digits", "objective": "simsiam", "split": "class", "tasks": 2, "steps_per_task": 2, "seeds": [1, 2],
        "arch": "resnet_tiny", "image_size": 8, "batch_size": 16}
    assert result["machine"]["device"] == "cpu" and "peak_memory_method" in result["machine"]
    assert [(r["strategy"], r["seed"]) for r in result["runs"]] == [
        ("finetune", 1), ("replay+lump", 1), ("lump+freeze", 1), ("finetune", 2), ("replay+lump", 2), ("lump+freeze", 2)]
    for run in result["runs"]:
        assert set(run) == RUN_KEYS
        R = run["acc_matrix"]
        assert len(R) == 2 and all(len(row) == 2 and all(0 <= a <= 1 for a in row) for row in R)
        assert run["avg_acc"] == pytest.approx(average_accuracy(R))
        assert run["forgetting"] == pytest.approx(forgetting(R))
        assert run["bwt"] == pytest.approx(backward_transfer(R))
        assert run["step_seconds_median"] > 0 and run["peak_memory_bytes"] > 0 and run["backward_flops_per_step"] > 0
        assert len(run["step_seconds_median_per_task"]) == 2 and min(run["step_seconds_median_per_task"]) > 0
        # any CKA passes threshold -1: one block freezes after the first step of task 1, before its middle step
        assert run["frozen_blocks_per_task"] == ([0, 1] if run["strategy"] == "lump+freeze" else [0, 0])
    # replay adds half a batch of replayed rows: more activations saved for backward than fine-tuning
    assert result["runs"][1]["peak_memory_bytes"] > result["runs"][0]["peak_memory_bytes"]
    # the seeds drew different batches, so the runs differ; the summary is their mean and paired difference
    finetune, mixed, _ = result["summary"]
    f1, m1, _, f2, m2, _ = result["runs"]
    assert f1["acc_matrix"] != f2["acc_matrix"]
    assert finetune["avg_acc"]["values"] == [f1["avg_acc"], f2["avg_acc"]]
    assert finetune["avg_acc"]["mean"] == pytest.approx((f1["avg_acc"] + f2["avg_acc"]) / 2)
    assert finetune["avg_acc_minus_reference"]["values"] == [0.0, 0.0]
    assert mixed["avg_acc_minus_reference"]["values"] == pytest.approx([m1["avg_acc"] - f1["avg_acc"],
                                                                        m2["avg_acc"] - f2["avg_acc"]])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # `bench table` turns the JSON into the markdown of docs/results.md: one row per run, the plot linked
    md = tmp_path / "results.md"
    args = build_parser().parse_args(["bench", "table", str(out), "--command", "streamd bench cl ...", "--out", str(md)])
    assert args.func(args) == 0
    text = md.read_text()
    assert "    streamd bench cl ..." in text
    rows = [line for line in text.splitlines() if line.startswith(("| finetune", "| replay+lump", "| lump+freeze"))]
    assert len(rows) == 3 and rows[2].endswith("| 0, 1 |") and f"| {finetune['avg_acc']['mean']:.3f} ± {finetune['avg_acc']['std']:.3f} |" in rows[0]
    assert f"| {mixed['avg_acc_minus_reference']['mean']:+.3f} ± " in rows[1]
    assert "seeds 1, 2 (mean ± sample sd" in text and "![accuracy matrices, mean over seeds](r.png)" in text


def test_bench_throughput_reports_rates_and_ratios(tmp_path):
    args = build_parser().parse_args(["bench", "throughput", "--arch", "resnet_tiny", "--image-size", "16",
                                      "--batch", "8", "--steps", "1", "--rounds", "1", "--device", "cpu"])
    result = measure(args)
    rates, ratios = result["images_per_second"], result["ratios"]
    assert set(rates) == {"bare", "learner", "augment"} and all(r > 0 for r in rates.values())
    assert ratios["learner_vs_bare"] == pytest.approx(rates["learner"] / rates["bare"])
    assert ratios["augment_vs_learner"] == pytest.approx(rates["augment"] / rates["learner"])
    assert result["passed"] == verdicts(ratios)     # which way they go depends on this machine's timing


def test_throughput_verdicts_apply_each_floor():
    assert verdicts({"learner_vs_bare": 0.95, "augment_vs_learner": 3.0}) == {"learner_vs_bare": True,
                                                                              "augment_vs_learner": True}
    assert verdicts({"learner_vs_bare": 0.94, "augment_vs_learner": 2.9}) == {"learner_vs_bare": False,
                                                                              "augment_vs_learner": False}


def test_bench_freezing_reports_falling_flops_and_memory(tmp_path):
    out = tmp_path / "f.json"
    args = build_parser().parse_args(["bench", "freezing", "--arch", "resnet_tiny", "--image-size", "8", "--batch", "8",
                                      "--rounds", "1", "--device", "cpu", "--proj-hidden", "32", "--proj-dim", "16",
                                      "--pred-hidden", "8", "--out", str(out)])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["frozen_blocks"] for r in rows] == [0, 1, 2, 3, 4]
    flops = [r["backward_flops"] for r in rows]
    memory = [r["train_bytes"] for r in rows]
    assert all(a > b for a, b in zip(flops, flops[1:])) and all(a > b for a, b in zip(memory, memory[1:]))
    assert rows[0]["backward_flops_vs_unfrozen"] == 1.0 and rows[4]["step_seconds_median"] > 0


def test_bench_plugin_options_must_fit_and_be_used_before_any_training():
    check_plugin_options(["finetune", "lump+freeze"], {"freeze": {"threshold": 0.5}})
    with pytest.raises(UsageError, match="freeze options: threshhold: Extra inputs"):
        check_plugin_options(["lump+freeze"], {"freeze": {"threshhold": 0.5}})
    with pytest.raises(UsageError, match="for exssnet, which no strategy"):
        check_plugin_options(["finetune", "replay"], {"exssnet": {}})
