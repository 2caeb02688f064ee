import io

import torch

from publishing_fixtures import images, perturb, tiny_learner
from streamd.learning.health import representation_health
from streamd.service.metrics import Metrics
from streamd.service.probe import Prober, read_history


class StubLearner:
    """Features we control: 'good' = mean brightness per channel (separates dark from bright
    images), 'forgotten' = noise."""

    def __init__(self):
        self.task, self.mode = 0, "good"

    def embed(self, imgs, task=None):
        if self.mode == "good":
            return imgs.float().mean((2, 3)) - 127.5
        return torch.randn(len(imgs), 3, generator=torch.Generator().manual_seed(len(imgs)))


def two_class_batch(n, seed):
    """Labels alternate 0/1; class 0 dark, class 1 bright."""
    labels = torch.arange(n) % 2
    g = torch.Generator().manual_seed(seed)
    base = torch.where(labels.view(-1, 1, 1, 1) == 1, 180, 40)
    imgs = (base + torch.randint(0, 40, (n, 3, 8, 8), generator=g)).to(torch.uint8)
    return imgs, labels


def test_hold_out_keeps_a_small_bounded_random_share_per_task():
    prober = Prober(per_task=40, hold_out_every=4)
    ids = torch.arange(200, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)  # pixel value = row id
    labels = torch.arange(200) % 2
    trained = []
    for start in range(0, 100, 20):  # 100 rows: about 25 held out
        rest, rest_labels, kept = prober.hold_out(ids[start:start + 20], labels[start:start + 20], task=0)
        trained += rest[:, 0, 0, 0].tolist()
        assert torch.equal(rest, ids[start:start + 20][kept])   # the mask says which rows were kept
        assert torch.equal(rest_labels, rest[:, 0, 0, 0].long() % 2)
    held = prober.sets[0]["images"][:, 0, 0, 0].tolist()
    assert 12 <= len(held) <= 38 and sorted(held + trained) == list(range(100))  # every row goes one way
    assert set(prober.sets[0]["labels"].tolist()) == {0, 1}
    rest, _, _ = prober.hold_out(ids[100:], labels[100:], task=0)
    assert len(prober.sets[0]["images"]) == 40 and len(rest) == 100 - (40 - len(held))  # full, then bounded
    assert len(prober.hold_out(ids[:50], labels[:50], task=0)[0]) == 50  # nothing more is held out
    rest, rest_labels, _ = prober.hold_out(ids[:20], None, task=1)
    assert len(rest) + len(prober.sets[1]["images"]) == 20 and (rest_labels == -1).all()


def test_accuracy_forgetting_matrix_metrics_and_history(tmp_path):
    metrics = Metrics()
    prober = Prober(per_task=32, every_steps=100, history_path=tmp_path / "history", metrics=metrics, hold_out_every=2)
    learner = StubLearner()
    for seed in range(4):
        prober.hold_out(*two_class_batch(16, seed), task=0)
    assert prober.maybe_measure(learner, step=50) is None  # not due yet
    first = prober.maybe_measure(learner, step=100)
    assert first["accuracy"] == {0: 1.0} and first["forgetting"] == {}
    prober.on_task_end(learner, 0)
    learner.task = 1
    for seed in range(4, 8):
        prober.hold_out(*two_class_batch(16, seed), task=1)
    learner.mode = "forgotten"
    second = prober.maybe_measure(learner, step=130, force=True, training={"loss": 2.5, "images_per_second": float("nan")})
    assert second["accuracy"][0] < 0.9 and second["forgetting"][0] == 1.0 - second["accuracy"][0]
    assert second["forgetting_mean"] == second["forgetting"][0] and 1 not in second["forgetting"]
    assert second["drift"][0] > 0.2  # noise features vs the task-end reference
    assert prober.matrix == {0: {0: 1.0}, 1: second["accuracy"]}
    sample = metrics.registry.get_sample_value
    assert sample("streamd_probe_accuracy_ratio", {"task": "0"}) == second["accuracy"][0]
    assert sample("streamd_probe_forgetting_ratio", {"task": "0"}) == second["forgetting"][0]
    assert sample("streamd_forgetting_mean_ratio") == second["forgetting_mean"]
    assert sample("streamd_representation_drift_ratio", {"task": "0"}) == second["drift"][0]
    rows = read_history(tmp_path / "history").to_pylist()
    assert {(r["step"], r["task"], r["metric"], r["value"]) for r in rows if r["metric"] == "accuracy"} == {
        (100, 0, "accuracy", 1.0), (130, 0, "accuracy", second["accuracy"][0]),
        (130, 1, "accuracy", second["accuracy"][1])}
    assert {r["metric"] for r in rows} >= {"accuracy", "forgetting", "forgetting_mean", "drift", "loss"}
    assert [(r["step"], r["value"]) for r in rows if r["metric"] == "loss"] == [(130, 2.5)]
    assert "images_per_second" not in {r["metric"] for r in rows}     # not measured yet (NaN): no row


def test_state_round_trips_through_a_weights_only_checkpoint_load():
    prober = Prober(per_task=8, hold_out_every=2)
    learner = StubLearner()
    prober.hold_out(*two_class_batch(16, 0), task=0)
    prober.maybe_measure(learner, step=0, force=True)
    prober.on_task_end(learner, 0)
    buffer = io.BytesIO()
    torch.save(prober.state_dict(), buffer)
    restored = Prober(per_task=8, hold_out_every=2)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert torch.equal(restored.sets[0]["images"], prober.sets[0]["images"])
    assert restored.best == prober.best and restored.matrix == prober.matrix and restored.last_step == 0
    assert torch.equal(restored.reference[0], prober.reference[0])
    prober.hold_out(*two_class_batch(4, 1), task=0)
    restored.hold_out(*two_class_batch(4, 1), task=0)  # the hold-out phase continues where it was
    assert torch.equal(restored.sets[0]["images"], prober.sets[0]["images"])


def test_task_labels_stay_bounded():
    metrics = Metrics()
    prober = Prober(per_task=4, hold_out_every=1, metrics=metrics, max_tasks=2)
    learner = StubLearner()
    for task in range(3):
        learner.task = task
        prober.hold_out(*two_class_batch(4, task), task=task)
        prober.maybe_measure(learner, step=task, force=True)
    assert sorted(prober.sets) == [1, 2]
    assert metrics.registry.get_sample_value("streamd_probe_accuracy_ratio", {"task": "0"}) is None
    assert metrics.registry.get_sample_value("streamd_probe_accuracy_ratio", {"task": "2"}) == 1.0


def test_history_compacts_without_losing_rows(tmp_path):
    prober = Prober(per_task=8, hold_out_every=1, history_path=tmp_path / "h", metrics=Metrics())
    prober.history.compact_after = 3
    learner = StubLearner()
    prober.hold_out(*two_class_batch(8, 0), task=0)
    for step in range(7):
        prober.maybe_measure(learner, step=step, force=True)
    assert len(list((tmp_path / "h").glob("part-*.parquet"))) <= 3
    rows = read_history(tmp_path / "h").to_pylist()
    assert sorted({r["step"] for r in rows}) == list(range(7))
    assert len(rows) == len({(r["step"], r["task"], r["metric"]) for r in rows})


def test_real_learner_drift_is_zero_at_task_end_and_grows_with_training():
    learner = tiny_learner()
    prober = Prober(per_task=16, hold_out_every=1)
    prober.hold_out(images(16, seed=3), None, task=0)
    prober.on_task_end(learner, 0)
    same = prober.maybe_measure(learner, step=0, force=True)
    assert same["accuracy"] == {} and abs(same["drift"][0]) < 1e-6  # unlabelled: drift only
    perturb(learner)
    perturb(learner)
    assert prober.maybe_measure(learner, step=1, force=True)["drift"][0] > 1e-3


def test_history_backlog_is_bounded_while_the_folder_cannot_be_written(tmp_path, caplog):
    """A real failed write (the history path lies under a regular file), then recovery."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    metrics = Metrics()
    prober = Prober(per_task=8, hold_out_every=1, history_path=blocker / "history", metrics=metrics,
                    max_pending_rows=10)
    history, learner = prober.history, StubLearner()
    prober.hold_out(*two_class_batch(8, 0), task=0)
    training = {"loss": 1.0, "images_per_second": 10.0}
    prober.maybe_measure(learner, step=0, force=True, training=training)
    per_measure = len(history.pending)   # forgetting_mean, accuracy of task 0, loss, throughput
    assert 3 <= per_measure < 10
    made = [dict(r) for r in history.pending]
    for step in range(1, 9):
        prober.maybe_measure(learner, step=step, force=True, training=training)
        made += history.pending[-per_measure:]
    assert history.pending == made[-10:], "the newest rows are kept, the oldest dropped"
    dropped = metrics.registry.get_sample_value("streamd_probe_history_rows_dropped_total")
    assert dropped == 9 * per_measure - 10
    assert caplog.text.count("probe history write to") == 1 and caplog.text.count("backlog full") == 1

    blocker.unlink()
    blocker.mkdir()
    prober.maybe_measure(learner, step=9, force=True, training=training)
    assert history.pending == [] and f"writable again; {dropped:.0f} rows were dropped" in caplog.text
    rows = read_history(blocker / "history").to_pylist()
    assert len(rows) == 10 + per_measure and {r["step"] for r in rows} == {r["step"] for r in made[-10:]} | {9}


def test_collapse_signals_tell_spread_features_from_a_point_and_from_a_line():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(128, 32, generator=g)
    point = torch.randn(1, 32, generator=g) + 1e-3 * torch.randn(128, 32, generator=g)
    line = torch.randn(128, 1, generator=g) @ torch.randn(1, 32, generator=g) + 1e-3 * torch.randn(128, 32, generator=g)
    healthy, at_a_point, on_a_line = map(representation_health, (spread, point, line))
    assert 0.9 < healthy["std_ratio"] < 1.1 and healthy["effective_rank"] > 20
    assert at_a_point["std_ratio"] < 0.01            # complete collapse: the spread says it
    assert on_a_line["effective_rank"] < 2           # dimensional collapse: the rank says it
    assert representation_health(spread[:3]) is None
    assert representation_health(torch.ones(8, 4)) == {"std_ratio": 0.0, "effective_rank": 1.0}


def test_unlabelled_probe_reports_representation_health_in_result_gauges_and_history(tmp_path):
    metrics = Metrics()
    prober = Prober(per_task=16, hold_out_every=1, history_path=tmp_path / "history", metrics=metrics)
    prober.hold_out(images(16, seed=3), None, task=0)
    result = prober.maybe_measure(tiny_learner(), step=0, force=True)
    assert result["accuracy"] == {} and set(result["health"]) == {"std_ratio", "effective_rank"}
    assert metrics.registry.get_sample_value("streamd_representation_std_ratio") == result["health"]["std_ratio"] > 0
    assert metrics.registry.get_sample_value("streamd_representation_effective_rank") == \
        result["health"]["effective_rank"] > 1
    rows = {r["metric"]: r["value"] for r in read_history(tmp_path / "history").to_pylist()}
    assert rows["std_ratio"] == result["health"]["std_ratio"]
